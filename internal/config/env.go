package config

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// applyEnv overrides the leaves of the struct dst points to with the
// UNIGATE_* variables in environ ("KEY=value" strings, as os.Environ
// returns). When a variable appears twice the first one wins, as with
// os.Getenv. Every problem is reported, joined.
func applyEnv(dst any, environ []string) error {
	byName := map[string]field{}
	for _, f := range leaves(reflect.ValueOf(dst)) {
		byName[envName(f.path)] = f
	}
	seen := map[string]bool{}
	var errs []error
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) || seen[name] {
			continue
		}
		seen[name] = true
		if name == EnvConfigFile {
			continue
		}
		f, ok := byName[name]
		if !ok {
			errs = append(errs, fmt.Errorf("%w %s%s", ErrUnknownEnv, name, suggestEnv(name, byName)))
			continue
		}
		if err := setString(f.value, value); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s (%s): %w: %v", name, f.path, ErrBadValue, err))
		}
	}
	return errors.Join(errs...)
}

// suggestEnv names the known variable closest to a misspelt one.
func suggestEnv(name string, known map[string]field) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	if best := closest(name, names); best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return ""
}

// closest returns the candidate within edit distance 2 of s, if any.
func closest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short ASCII names.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
