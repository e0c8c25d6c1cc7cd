//go:build !race

package protocol

import "testing"

// TestJSONEncodeGrowsOnce: encoding into an empty slice allocates once (the
// size hint is enough when no string needs escapes). Not under -race, whose
// instrumentation makes slices.Grow allocate twice.
func TestJSONEncodeGrowsOnce(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	for _, s := range samples() {
		t.Run(s.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(20, func() {
				if _, err := JSON.AppendEncode(nil, &s.env); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 1 {
				t.Fatalf("%v allocations, want 1", allocs)
			}
		})
	}
}
