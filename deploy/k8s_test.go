package deploy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/unigate/unigate/internal/config"
)

// rendered is one overlay after kustomize, decoded strictly into the
// Kubernetes API types (an unknown or misspelt field is an error).
type rendered struct {
	sts      *appsv1.StatefulSet
	services map[string]*corev1.Service
	cms      map[string]*corev1.ConfigMap
	pdb      *policyv1.PodDisruptionBudget
}

func render(t *testing.T, overlay string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("k8s", "overlays", overlay))
	if err != nil {
		t.Fatalf("kustomize %s: %v", overlay, err)
	}
	out := rendered{services: map[string]*corev1.Service{}, cms: map[string]*corev1.ConfigMap{}}
	for _, r := range res.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		strict := func(v any) {
			t.Helper()
			if err := yaml.UnmarshalStrict(y, v); err != nil {
				t.Fatalf("%s %s/%s does not match the Kubernetes API: %v\n%s", overlay, r.GetKind(), r.GetName(), err, y)
			}
		}
		switch r.GetApiVersion() + " " + r.GetKind() {
		case "apps/v1 StatefulSet":
			if out.sts != nil {
				t.Fatal("two StatefulSets")
			}
			out.sts = &appsv1.StatefulSet{}
			strict(out.sts)
		case "v1 Service":
			s := &corev1.Service{}
			strict(s)
			out.services[s.Name] = s
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			strict(c)
			out.cms[c.Name] = c
		case "policy/v1 PodDisruptionBudget":
			out.pdb = &policyv1.PodDisruptionBudget{}
			strict(out.pdb)
		default:
			t.Fatalf("%s: unexpected %s %s", overlay, r.GetApiVersion(), r.GetKind())
		}
	}
	if out.sts == nil || out.pdb == nil || len(out.services) != 2 || len(out.cms) != 1 {
		t.Fatalf("%s: want a StatefulSet, a PDB, 2 Services and a ConfigMap; got %+v", overlay, out)
	}
	return out
}

// podEnv is the environment container c gets in pod name: literal values
// and the pod's name by the downward API (other references are left out).
func podEnv(t *testing.T, c *corev1.Container, name string) []string {
	t.Helper()
	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			env = append(env, e.Name+"="+name)
		case e.ValueFrom.FieldRef != nil:
			t.Fatalf("env %s refers to %s, which podEnv does not know", e.Name, e.ValueFrom.FieldRef.FieldPath)
		}
	}
	return env
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKustomizeOverlays renders both overlays and checks what the
// Kubernetes schema cannot: the references between objects, the probes,
// the drain, the volumes, and that the configuration in the ConfigMap is
// one unigate accepts.
func TestKustomizeOverlays(t *testing.T) {
	for _, tc := range []struct {
		overlay  string
		replicas int32
		cluster  bool
	}{
		{"single-node", 1, false},
		{"three-node", 3, true},
	} {
		t.Run(tc.overlay, func(t *testing.T) {
			r := render(t, tc.overlay)
			sts := r.sts
			if sts.Spec.Replicas == nil || *sts.Spec.Replicas != tc.replicas {
				t.Fatalf("replicas %v, want %d", sts.Spec.Replicas, tc.replicas)
			}
			pod := sts.Spec.Template
			if !matches(sts.Spec.Selector.MatchLabels, pod.Labels) {
				t.Fatalf("StatefulSet selector %v does not select its pods %v", sts.Spec.Selector.MatchLabels, pod.Labels)
			}
			if !matches(r.pdb.Spec.Selector.MatchLabels, pod.Labels) || r.pdb.Spec.MaxUnavailable == nil || r.pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Fatalf("PDB %+v", r.pdb.Spec)
			}
			headless := r.services[sts.Spec.ServiceName]
			if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone {
				t.Fatalf("serviceName %q is not a headless Service", sts.Spec.ServiceName)
			}
			var c *corev1.Container
			for i := range pod.Spec.Containers {
				if pod.Spec.Containers[i].Name == "unigate" {
					c = &pod.Spec.Containers[i]
				}
			}
			if c == nil {
				t.Fatal("no unigate container")
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			for name, s := range r.services {
				if !matches(s.Spec.Selector, pod.Labels) {
					t.Errorf("Service %s selects %v, not the pods", name, s.Spec.Selector)
				}
				for _, p := range s.Spec.Ports {
					if _, ok := ports[p.TargetPort.String()]; !ok {
						t.Errorf("Service %s port %s targets %q, which the container does not name", name, p.Name, p.TargetPort.String())
					}
				}
			}
			if tc.cluster && ports["nats-cluster"] == 0 {
				t.Error("three-node: no nats-cluster port")
			}
			probe := func(name string, p *corev1.Probe, path string) {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || ports[p.HTTPGet.Port.String()] == 0 {
					t.Errorf("%s probe %+v: want GET %s on a named container port", name, p, path)
				}
			}
			probe("startup", c.StartupProbe, "/healthz")
			probe("liveness", c.LivenessProbe, "/healthz")
			probe("readiness", c.ReadinessProbe, "/readyz")
			if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
				t.Error("no preStop sleep: the pod must leave the endpoints before SIGTERM drains it")
			} else if grace := pod.Spec.TerminationGracePeriodSeconds; grace == nil || *grace < c.Lifecycle.PreStop.Sleep.Seconds+15 {
				t.Errorf("terminationGracePeriodSeconds %v leaves no time for the drain", grace)
			}
			// Non-root, read-only, as the image's numeric user.
			psc := pod.Spec.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
				t.Errorf("pod security context %+v: want runAsNonRoot, user 65532", psc)
			}
			if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("the container's root file system is writable")
			}
			// Volumes: the claim template at /data, the config map, the key.
			if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != "data" {
				t.Fatalf("volumeClaimTemplates %+v", sts.Spec.VolumeClaimTemplates)
			}
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
			if mounts["data"] != "/data" || mounts["config"] != "/etc/unigate" {
				t.Fatalf("mounts %v", mounts)
			}
			var cm *corev1.ConfigMap
			for _, v := range pod.Spec.Volumes {
				switch {
				case v.ConfigMap != nil:
					cm = r.cms[v.ConfigMap.Name]
					if cm == nil {
						t.Fatalf("volume %s names ConfigMap %q, which is not rendered", v.Name, v.ConfigMap.Name)
					}
				case v.Secret != nil:
					optional := v.Secret.Optional != nil && *v.Secret.Optional
					if optional == tc.cluster {
						t.Errorf("Secret %s optional=%v; the nodes of a cluster must share the key", v.Secret.SecretName, optional)
					}
				}
			}
			if cm == nil {
				t.Fatal("no ConfigMap volume")
			}
			if !slices.Contains(c.Args, "/etc/unigate/unigate.yaml") {
				t.Errorf("args %v do not name the mounted configuration", c.Args)
			}
			// The configuration is one unigate loads and validates, with
			// the environment the container gets (pod 0's).
			file := filepath.Join(t.TempDir(), "unigate.yaml")
			if err := os.WriteFile(file, []byte(cm.Data["unigate.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			load := func(ordinal int) config.Config {
				t.Helper()
				cfg, err := config.Load(file, podEnv(t, c, fmt.Sprintf("%s-%d", sts.Name, ordinal)))
				if err == nil {
					err = cfg.Validate()
				}
				if err != nil {
					t.Fatalf("the ConfigMap's unigate.yaml is not valid in pod %d: %v", ordinal, err)
				}
				return cfg
			}
			cfg := load(0)
			if cfg.DataDir != mounts["data"] || cfg.Admin.Pprof || !strings.HasPrefix(cfg.Admin.Listen, ":") {
				t.Errorf("config: data_dir %q (volume at %s), admin %q pprof %v", cfg.DataDir, mounts["data"], cfg.Admin.Listen, cfg.Admin.Pprof)
			}
			if strings.Contains(cm.Data["unigate.yaml"], "TODO") {
				t.Error("a TODO is left in the configuration")
			}
			if !tc.cluster {
				if cfg.Clustered() {
					t.Error("single-node: cluster mode is on")
				}
				return
			}
			// Three nodes: every pod is a cluster node named after itself,
			// routed to every pod by its stable DNS name on the port the
			// container and the headless Service name nats-cluster, R3.
			if !headless.Spec.PublishNotReadyAddresses {
				t.Error("the headless Service hides pods that are not ready: the routes (and so readiness) never form")
			}
			var svcPort int32
			for _, p := range headless.Spec.Ports {
				if p.TargetPort.String() == "nats-cluster" {
					svcPort = p.Port
				}
			}
			if svcPort != ports["nats-cluster"] {
				t.Errorf("headless Service nats-cluster port %d, container %d", svcPort, ports["nats-cluster"])
			}
			if cfg.NATS.Replicas != 3 || cfg.NATS.URL != "" {
				t.Errorf("nats: replicas %d, url %q; want 3 replicas on the embedded servers", cfg.NATS.Replicas, cfg.NATS.URL)
			}
			if _, port, err := net.SplitHostPort(cfg.Cluster.Listen); err != nil || port != fmt.Sprint(ports["nats-cluster"]) {
				t.Errorf("cluster.listen %q is not the nats-cluster port %d", cfg.Cluster.Listen, ports["nats-cluster"])
			}
			var want []string
			for i := range int(tc.replicas) {
				want = append(want, fmt.Sprintf("%s-%d.%s:%d", sts.Name, i, headless.Name, ports["nats-cluster"]))
			}
			got := slices.Clone(cfg.Cluster.Routes)
			for i, r := range got {
				got[i] = strings.TrimPrefix(r, "nats-route://")
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("cluster.routes %v, want every pod by its stable name %v", cfg.Cluster.Routes, want)
			}
			for i := range int(tc.replicas) {
				if name := load(i).Cluster.NodeName; name != fmt.Sprintf("%s-%d", sts.Name, i) {
					t.Errorf("pod %d: cluster.node_name %q, want its pod name", i, name)
				}
			}
		})
	}
}
