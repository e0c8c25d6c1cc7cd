package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The field walker below is shared by the YAML loader, the environment,
// the flags and the tests, so that every field is reachable by the same
// path everywhere and no layer needs a hand-kept list.

var durationType = reflect.TypeFor[time.Duration]()

// field is one leaf of a configuration struct.
type field struct {
	path  string        // yaml path, "websocket.idle_timeout"
	value reflect.Value // settable
}

// envName is the environment variable of a yaml path.
func envName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// flagName is the flag of a yaml path.
func flagName(path string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(path)
}

// yamlKey returns the key of a struct field, or "" if it has none.
func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

// isSection reports whether t is a nested section rather than a leaf.
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != durationType
}

// leaves returns every leaf field of the struct v points to, in
// declaration order.
func leaves(v reflect.Value) []field {
	var out []field
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			key := yamlKey(t.Field(i))
			if key == "" {
				continue
			}
			path := prefix + key
			if isSection(t.Field(i).Type) {
				walk(v.Field(i), path+".")
				continue
			}
			out = append(out, field{path: path, value: v.Field(i)})
		}
	}
	walk(v.Elem(), "")
	return out
}

// lookup returns the leaf at path in the struct v points to.
func lookup(v reflect.Value, path string) (reflect.Value, bool) {
	for _, f := range leaves(v) {
		if f.path == path {
			return f.value, true
		}
	}
	return reflect.Value{}, false
}

// setString parses s as v's type and stores it. The same syntax serves the
// environment and the flags.
func setString(v reflect.Value, s string) error {
	if v.Type() == apiKeysType {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(s), &n); err != nil {
			return fmt.Errorf("want a YAML or JSON list such as [{key_file: /run/secrets/k, tenant: acme, scopes: [read]}]: %v", err)
		}
		var keys APIKeys
		if len(n.Content) > 0 {
			var err error
			if keys, err = parseAPIKeys(n.Content[0]); err != nil {
				return err
			}
		}
		v.Set(reflect.ValueOf(keys))
		return nil
	}
	if v.Type() == durationType {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("want a duration such as 10s or 1m30s: %q", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("want true or false: %q", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("want an integer that fits %s: %q", v.Type(), s)
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("want a non-negative integer that fits %s: %q", v.Type(), s)
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), v.Type().Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("want a number such as 0.8: %q", s)
		}
		v.SetFloat(f)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported field type %s", v.Type())
		}
		var list []string
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = append(list, item)
			}
		}
		v.Set(reflect.ValueOf(list).Convert(v.Type()))
	default:
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}

// formatString is the inverse of setString, for flag defaults.
func formatString(v reflect.Value) string {
	if v.Type() == apiKeysType {
		return fmt.Sprint(v.Interface()) // secrets redacted by APIKey.String
	}
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = v.Index(i).String()
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(v.Interface())
	}
}
