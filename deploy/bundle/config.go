package bundle

import (
	"fmt"
	"strings"
)

// DataDir is where the packaged service keeps its state: the systemd
// unit's StateDirectory and the bundled configuration's data_dir.
const DataDir = "/var/lib/unigate"

// Config turns the example configuration (config.Example: every key at its
// default, each with its comment) into the bundle's etc/unigate.yaml: the
// same file with data_dir set to DataDir, where the systemd unit lets the
// service write.
func Config(example string) ([]byte, error) {
	const from = "data_dir: \"./data\"\n"
	if strings.Count(example, from) != 1 {
		return nil, fmt.Errorf("bundle: the example configuration has no single line %q", strings.TrimSpace(from))
	}
	head := "# Installed from the Unigate bundle: the example configuration (`unigate config\n" +
		"# example`) with data_dir set for the systemd unit. Every other key is at its default.\n#\n"
	return []byte(head + strings.Replace(example, from, "data_dir: \""+DataDir+"\"\n", 1)), nil
}
