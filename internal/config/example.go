package config

import _ "embed"

//go:embed example.yaml
var example string

// Example returns a commented YAML file that sets every field to its
// default. It is the reference for the file format; tests check that it
// loads to exactly Default, that it names every field, and that
// docs/configuration.md quotes it.
func Example() string { return example }
