package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxFileBytes bounds the configuration file; a real one is a few KiB.
const maxFileBytes = 1 << 20

// Load returns Default overridden by the YAML file at path (none when path
// is "") and then by the UNIGATE_* variables in environ (as os.Environ
// returns them). Errors name the file and line, or the variable. Load does
// not validate the result; call Validate after applying flags.
func Load(path string, environ []string) (Config, error) {
	c := Default()
	if path != "" {
		data, err := readFile(path)
		if err != nil {
			return Config{}, err
		}
		if err := decodeYAML(path, data, &c); err != nil {
			return Config{}, err
		}
	}
	if err := applyEnv(&c, environ); err != nil {
		return Config{}, err
	}
	if len(c.WebSocket.AllowedOrigins) == 0 {
		c.WebSocket.AllowedOrigins = nil // "[]" and absent compare equal
	}
	if len(c.WebSocket.TenantOrigins) == 0 {
		c.WebSocket.TenantOrigins = nil
	}
	if len(c.Limits.AllowList) == 0 {
		c.Limits.AllowList = nil
	}
	if len(c.Limits.TrustedProxies) == 0 {
		c.Limits.TrustedProxies = nil
	}
	if len(c.API.Keys) == 0 {
		c.API.Keys = nil
	}
	if len(c.Web.CannedReplies) == 0 {
		c.Web.CannedReplies = nil
	}
	if len(c.Cluster.Routes) == 0 {
		c.Cluster.Routes = nil
	}
	if len(c.Crypto.IdentityKeys) == 0 {
		c.Crypto.IdentityKeys = nil
	}
	if len(c.Crypto.RequiredTenants) == 0 {
		c.Crypto.RequiredTenants = nil
	}
	if len(c.Backends.Regions) == 0 {
		c.Backends.Regions = nil
	}
	for _, l := range []*[]string{
		&c.Backends.BotPluginArgs, &c.Backends.BotPluginEnv,
		&c.Backends.RouterPluginArgs, &c.Backends.RouterPluginEnv,
		&c.Backends.HookPluginArgs, &c.Backends.HookPluginEnv,
	} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return c, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("config: %s: larger than %d bytes", path, maxFileBytes)
	}
	return data, nil
}

// decodeYAML overrides the fields of *dst that the document sets.
//
// It walks the YAML tree against the struct itself instead of relying on
// yaml.Decoder.KnownFields so that errors carry the key's full path and
// position, durations get the same syntax and messages as the environment,
// duplicate keys are caught, and a key with no value keeps its default.
func decodeYAML(name string, data []byte, dst *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: all defaults
		}
		return fmt.Errorf("config: %s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return fmt.Errorf("config: %s: %w", name, err)
		}
		return fmt.Errorf("config: %s:%d: %w: a second YAML document; put everything in one", name, extra.Line, ErrBadValue)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	d := decoder{name: name, active: map[*yaml.Node]bool{}}
	d.section(doc.Content[0], reflect.ValueOf(dst).Elem(), "")
	return d.err()
}

// Limits of the walk. Aliases and merge keys can make a small document
// stand for a huge (or, with a self-reference, infinite) one; these bound
// the work and the size of the error.
const (
	maxWalkSteps = 10000
	maxErrors    = 20
)

type decoder struct {
	name      string
	errs      []error
	dropped   int                 // errors beyond maxErrors
	steps     int                 // sections, leaves and list items visited
	exhausted bool                // steps went over maxWalkSteps
	active    map[*yaml.Node]bool // sections being walked, to catch cycles
}

// step counts a visited node and reports whether the walk may go on.
func (d *decoder) step(n *yaml.Node) bool {
	d.steps++
	if d.steps > maxWalkSteps && !d.exhausted {
		d.exhausted = true
		d.fail(n, "", fmt.Errorf("%w: too many aliases or merge keys", ErrBadValue))
	}
	return !d.exhausted
}

func (d *decoder) err() error {
	if d.dropped > 0 {
		d.errs = append(d.errs, fmt.Errorf("config: %s: %d more errors", d.name, d.dropped))
	}
	return errors.Join(d.errs...)
}

func (d *decoder) fail(n *yaml.Node, path string, err error) {
	if len(d.errs) >= maxErrors {
		d.dropped++
		return
	}
	where := fmt.Sprintf("%s:%d:%d", d.name, n.Line, n.Column)
	if path != "" {
		where += ": " + path
	}
	d.errs = append(d.errs, fmt.Errorf("config: %s: %w", where, err))
}

// resolve follows aliases. The loop is bounded: the parser rejects alias
// cycles, and a chain can be no longer than the document.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// section applies mapping n to struct v; path is the section's key path
// ("" at the top, "websocket" inside websocket:).
func (d *decoder) section(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if n == nil || isNull(n) || !d.step(n) {
		return
	}
	if d.active[n] {
		d.fail(n, path, fmt.Errorf("%w: a merge key refers to the mapping it is in", ErrBadValue))
		return
	}
	if n.Kind != yaml.MappingNode {
		what := "the top level"
		if path != "" {
			what = path
		}
		d.fail(n, "", fmt.Errorf("%w: %s must be a mapping of keys, not %s", ErrBadValue, what, describe(n)))
		return
	}
	d.active[n] = true
	defer delete(d.active, n)
	// YAML merge keys ("<<: *base") first, so explicit keys override them
	// wherever they appear.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			d.merge(n.Content[i+1], v, path)
		}
	}
	t := v.Type()
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, fmt.Errorf("%w: keys must be plain names, not %s", ErrBadValue, describe(k)))
			continue
		}
		full := k.Value
		if path != "" {
			full = path + "." + k.Value
		}
		if line, dup := seen[k.Value]; dup {
			d.fail(k, full, fmt.Errorf("%w: key %q repeated (first at line %d)", ErrBadValue, k.Value, line))
			continue
		}
		seen[k.Value] = k.Line
		idx := -1
		var keys []string
		for j := range t.NumField() {
			key := yamlKey(t.Field(j))
			if key == "" {
				continue
			}
			keys = append(keys, key)
			if key == k.Value {
				idx = j
			}
		}
		if idx < 0 {
			hint := ""
			if best := closest(k.Value, keys); best != "" {
				hint = fmt.Sprintf("; did you mean %q?", best)
			}
			in := "at the top level"
			if path != "" {
				in = "in " + path
			}
			d.fail(k, "", fmt.Errorf("%w %q %s (known: %s)%s", ErrUnknownKey, k.Value, in, strings.Join(keys, ", "), hint))
			continue
		}
		if isSection(t.Field(idx).Type) {
			d.section(val, v.Field(idx), full)
		} else {
			d.leaf(val, v.Field(idx), full)
		}
	}
}

func (d *decoder) merge(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if n != nil && n.Kind == yaml.SequenceNode {
		for _, item := range n.Content {
			d.section(item, v, path)
		}
		return
	}
	d.section(n, v, path)
}

// leaf sets one field from a YAML value. A null keeps the default.
func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if n == nil || isNull(n) || !d.step(n) {
		return
	}
	if v.Type() == apiKeysType {
		d.steps += len(n.Content)
		if !d.step(n) {
			return
		}
		keys, err := parseAPIKeys(n)
		if err != nil {
			d.fail(n, path, err)
			return
		}
		v.Set(reflect.ValueOf(keys))
		return
	}
	if v.Kind() == reflect.Slice {
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, fmt.Errorf("%w: want a list such as [a, b], not %s", ErrBadValue, describe(n)))
			return
		}
		d.steps += len(n.Content)
		if !d.step(n) {
			return
		}
		list := make([]string, 0, len(n.Content))
		for _, item := range n.Content {
			item = resolve(item)
			if item == nil || item.Kind != yaml.ScalarNode || isNull(item) {
				d.fail(n, path, fmt.Errorf("%w: list items must be strings", ErrBadValue))
				return
			}
			list = append(list, item.Value)
		}
		v.Set(reflect.ValueOf(list).Convert(v.Type()))
		return
	}
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, fmt.Errorf("%w: want a single value, not %s", ErrBadValue, describe(n)))
		return
	}
	switch {
	case v.Type() == durationType:
		dur, err := time.ParseDuration(n.Value)
		if err != nil {
			d.fail(n, path, fmt.Errorf("%w: want a duration such as 10s or 1m30s, not %q", ErrBadValue, n.Value))
			return
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		// Any scalar is text: listen: 8080 means "8080". A tagged
		// binary or similar is still taken verbatim.
		v.SetString(n.Value)
	default:
		// Numbers and booleans: the YAML library's own rules (hex and
		// octal literals, yes/no), with our message on failure.
		tmp := reflect.New(v.Type())
		if err := n.Decode(tmp.Interface()); err != nil {
			d.fail(n, path, fmt.Errorf("%w: want %s, not %q", ErrBadValue, kindName(v.Type()), n.Value))
			return
		}
		v.Set(tmp.Elem())
	}
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer that fits " + t.String()
	default:
		return "an integer that fits " + t.String()
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	default:
		return "a YAML node"
	}
}

var apiKeysType = reflect.TypeFor[APIKeys]()

// parseAPIKeys reads a list of API keys: mappings with the keys key,
// key_file, tenant and scopes.
func parseAPIKeys(n *yaml.Node) (APIKeys, error) {
	n = resolve(n)
	if n == nil || isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%w: want a list of {key or key_file, tenant, scopes}, not %s", ErrBadValue, describe(n))
	}
	keys := make(APIKeys, 0, len(n.Content))
	for i, item := range n.Content {
		item = resolve(item)
		if item == nil || item.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%w: item %d: want a mapping {key or key_file, tenant, scopes}", ErrBadValue, i)
		}
		var k APIKey
		seen := map[string]bool{}
		for j := 0; j+1 < len(item.Content); j += 2 {
			name, val := resolve(item.Content[j]), resolve(item.Content[j+1])
			if name == nil || val == nil || name.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%w: item %d: keys must be plain names", ErrBadValue, i)
			}
			if seen[name.Value] {
				return nil, fmt.Errorf("%w: item %d: key %q repeated", ErrBadValue, i, name.Value)
			}
			seen[name.Value] = true
			var dst *string
			switch name.Value {
			case "key":
				dst = &k.Key
			case "key_file":
				dst = &k.KeyFile
			case "tenant":
				dst = &k.Tenant
			case "scopes":
				if val.Kind != yaml.SequenceNode {
					return nil, fmt.Errorf("%w: item %d: scopes: want a list such as [read, write]", ErrBadValue, i)
				}
				for _, sc := range val.Content {
					sc = resolve(sc)
					if sc == nil || sc.Kind != yaml.ScalarNode {
						return nil, fmt.Errorf("%w: item %d: scopes: items must be strings", ErrBadValue, i)
					}
					k.Scopes = append(k.Scopes, sc.Value)
				}
				continue
			default:
				return nil, fmt.Errorf("%w %q in api.keys item %d (known: key, key_file, tenant, scopes)", ErrUnknownKey, name.Value, i)
			}
			if val.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%w: item %d: %s: want a single value", ErrBadValue, i, name.Value)
			}
			if !isNull(val) {
				*dst = val.Value
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}
