package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerImage builds the image of deploy/docker (FROM scratch, the
// static binary, non-root) with buildah, the daemonless builder of
// Debian's buildah package (docker build takes the same Dockerfile), and
// runs it: version, then serve with the image's own configuration, a real
// visitor and agent chatting over WebSocket, and a SIGTERM drain that saves
// the session snapshot in the image's /data as user 65532. Without buildah
// it skips loudly, or fails under CI (.ci/run installs it).
func TestContainerImage(t *testing.T) {
	buildah, err := exec.LookPath("buildah")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("buildah is missing under CI (apt-get install buildah; .ci/run installs it)")
		}
		t.Skip("SKIPPED LOUDLY: buildah not installed (apt-get install buildah): the container image is not tested")
	}
	arch := runtime.GOARCH
	bin := crossBinary(t, arch) // the release flags of make dist
	dist := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dist, "linux-"+arch), 0o755); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(bin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(filepath.Join(dist, "linux-"+arch, "unigate"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	// Its own image store, so that nothing is left behind and parallel runs
	// do not meet.
	store := t.TempDir()
	b := fmt.Sprintf("%s --root %s/root --runroot %s/run --storage-driver vfs", buildah, store, store)
	image := "localhost/unigate-test:" + strconv.Itoa(os.Getpid())
	build := exec.Command("sh", "../../deploy/docker/build.sh", dist, image, arch)
	build.Env = append(os.Environ(), "BUILDER="+b)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/docker/build.sh: %v\n%s", err, out)
	}
	inspect := strings.Fields(b)
	out, err := exec.Command(inspect[0], append(inspect[1:], "inspect", "--format",
		"{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}} {{len .OCIv1.RootFS.DiffIDs}}", image)...).Output()
	if err != nil {
		t.Fatalf("buildah inspect: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), "65532:65532 [/usr/local/bin/unigate] [serve -config /etc/unigate/unigate.yaml] 1"; got != want {
		t.Fatalf("image config %q, want %q (non-root, one layer FROM scratch)", got, want)
	}
	ctr, err := exec.Command(inspect[0], append(inspect[1:], "from", "--name", "unigate-test-"+strconv.Itoa(os.Getpid()), image)...).Output()
	if err != nil {
		t.Fatalf("buildah from: %v", err)
	}
	name := strings.TrimSpace(string(ctr))
	t.Cleanup(func() { _ = exec.Command(inspect[0], append(inspect[1:], "rm", name)...).Run() })

	// run is a two-line script running the image's binary in the container
	// (chroot isolation, the host's network), with the UNIGATE_* variables
	// of its caller, so that the helpers that start and talk to the host
	// binary work unchanged; a marker in its environment finds the process.
	mark := "UNIGATE_IMAGE_TEST_" + strconv.Itoa(os.Getpid())
	run := filepath.Join(t.TempDir(), "unigate-image")
	script := fmt.Sprintf(`#!/bin/sh
envs=$(env | sed -n 's/^\(UNIGATE_[A-Z0-9_]*=[^ ]*\)$/-e \1/p')
exec %s run --isolation chroot --network host -e IMAGE_TEST=%s $envs %s -- /usr/local/bin/unigate "$@"
`, b, mark, name)
	if err := os.WriteFile(run, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	out, err = exec.Command(run, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "linux/"+arch) || !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Fatalf("version in the image: %v\n%s", err, out)
	}
	// The image's configuration (data in /data, admin on :9090 moved off
	// for the test), text logs for the test's listening line.
	t.Setenv("UNIGATE_LOG_FORMAT", "text")
	n := startNode(t, run, "/data", "-config", "/etc/unigate/unigate.yaml")
	readyz(t, n.addr)
	pid := markedProcess(t, "IMAGE_TEST="+mark)
	// Killing buildah leaves the container's process behind.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !bytes.Contains(status, []byte("\nUid:\t65532\t65532\t65532\t65532\n")) {
		t.Fatalf("the gateway in the image does not run as 65532: %v\n%s", err, status)
	}
	v, a := chatPair(t, run, "/data", n)
	exchange(v, a, 0, 5, nil)
	v.waitUntil("acks", func() bool { return len(v.acked) == 5 })
	a.waitUntil("acks", func() bool { return len(a.acked) == 5 })
	v.waitUntil("all", func() bool { return lastOf(v.seen) == 10 })
	a.waitUntil("all", func() bool { return lastOf(a.seen) == 10 })
	checkOnceInOrder(t, v, 10)
	checkOnceInOrder(t, a, 10)

	// buildah run does not forward signals: SIGTERM goes to the gateway in
	// the container, as a container runtime's stop does.
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*chatClient{v, a} {
		select {
		case <-c.gone:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s still connected after the drain", c.name)
		}
	}
	select {
	case err := <-n.done:
		n.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if !strings.Contains(n.logs.String(), "session snapshot saved") {
		t.Fatalf("no snapshot saved on SIGTERM:\n%s", n.logs.String())
	}
	t.Logf("image %s: non-root FROM scratch, 10 messages relayed, drained", image)
}

// markedProcess returns the pid of the process whose environment holds
// mark (KEY=VALUE), waiting a little for it to appear.
func markedProcess(t *testing.T, mark string) int {
	t.Helper()
	want := []byte("\x00" + mark + "\x00")
	deadline := time.Now().Add(10 * time.Second)
	for {
		dirs, _ := filepath.Glob("/proc/[0-9]*")
		for _, d := range dirs {
			env, err := os.ReadFile(d + "/environ")
			if err != nil || !bytes.Contains(append([]byte{0}, env...), want) {
				continue
			}
			if cmd, _ := os.ReadFile(d + "/cmdline"); bytes.HasPrefix(cmd, []byte("/usr/local/bin/unigate\x00serve")) {
				pid, _ := strconv.Atoi(filepath.Base(d))
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no process with %s", mark)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
