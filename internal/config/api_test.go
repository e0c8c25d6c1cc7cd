package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestAPIKeysYAML(t *testing.T) {
	c := mustLoad(t, `
api:
  keys:
    - key: 0123456789abcdef-secret
      tenant: acme
      scopes: [read, write]
    - key_file: /run/secrets/other
      tenant: other
      scopes: [read]
`)
	want := APIKeys{
		{Key: "0123456789abcdef-secret", Tenant: "acme", Scopes: []string{"read", "write"}},
		{KeyFile: "/run/secrets/other", Tenant: "other", Scopes: []string{"read"}},
	}
	if !reflect.DeepEqual(c.API.Keys, want) {
		t.Fatalf("keys %v, want %v", c.API.Keys, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	// Secrets never show when the config is printed.
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c.API.Keys[0])} {
		if strings.Contains(s, "0123456789abcdef-secret") {
			t.Errorf("secret printed: %s", s)
		}
	}
}

func TestAPIKeysEnv(t *testing.T) {
	c := mustLoad(t, "", `UNIGATE_API_KEYS=[{"key_file":"/k","tenant":"acme","scopes":["read"]}]`)
	want := APIKeys{{KeyFile: "/k", Tenant: "acme", Scopes: []string{"read"}}}
	if !reflect.DeepEqual(c.API.Keys, want) {
		t.Fatalf("keys %v, want %v", c.API.Keys, want)
	}
	_, err := Load("", []string{"UNIGATE_API_KEYS=[{tenant: acme, colour: red}]"})
	wantErr(t, err, ErrBadValue, "UNIGATE_API_KEYS")
}

func TestAPIKeysBad(t *testing.T) {
	_, err := Load(writeConfig(t, "api:\n  keys:\n    - kee: x\n"), nil)
	wantErr(t, err, ErrUnknownKey, `"kee"`)
	_, err = Load(writeConfig(t, "api:\n  keys: acme\n"), nil)
	wantErr(t, err, ErrBadValue, "api.keys")

	for _, tc := range []struct {
		key  APIKey
		frag string
	}{
		{APIKey{Tenant: "acme", Scopes: []string{"read"}}, "exactly one of key and key_file"},
		{APIKey{Key: "0123456789abcdef", KeyFile: "/k", Tenant: "acme", Scopes: []string{"read"}}, "exactly one"},
		{APIKey{Key: "short", Tenant: "acme", Scopes: []string{"read"}}, "api.keys[0].key"},
		{APIKey{Key: "0123456789abcdef", Scopes: []string{"read"}}, "api.keys[0].tenant"},
		{APIKey{Key: "0123456789abcdef", Tenant: "acme"}, "api.keys[0].scopes"},
		{APIKey{Key: "0123456789abcdef", Tenant: "acme", Scopes: []string{"admin"}}, `unknown scope "admin"`},
	} {
		c := Default()
		c.API.Keys = APIKeys{tc.key}
		wantErr(t, c.Validate(), ErrInvalid, tc.frag)
	}
	c := Default()
	k := APIKey{Key: "0123456789abcdef", Tenant: "acme", Scopes: []string{"read"}}
	c.API.Keys = APIKeys{k, k}
	wantErr(t, c.Validate(), ErrInvalid, "same key as api.keys[0]")
}
