package broker

import (
	"errors"
	"fmt"
	"testing"
)

// FuzzDecodeHookEvent: no stored record, however malformed, panics the
// decoder; what it accepts is within bounds and survives a round trip.
// Seeds in testdata/fuzz/FuzzDecodeHookEvent (malformed lengths, types,
// versions, sealed texts without a keyring).
func FuzzDecodeHookEvent(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"c_a:conversation_opened:1:1","type":"conversation_opened","tenant":"acme","conv":"c_a","visitor":"v_1","at":1767225600123}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := decodeHookEvent(data, nil)
		if err != nil {
			if !errors.Is(err, ErrBadHookEvent) {
				t.Fatalf("error %v does not wrap ErrBadHookEvent", err)
			}
			return
		}
		if ev.ID == "" || len(ev.ID) > maxHookField || len(ev.Text) > maxHookText || len(ev.Attributes) > maxHookAttrs {
			t.Fatalf("accepted out of bounds: %+v", ev)
		}
		raw, err := (&HookEvents{}).encode(&ev)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeHookEvent(raw, nil)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", raw, err)
		}
		if fmt.Sprint(again) != fmt.Sprint(ev) {
			t.Fatalf("round trip changed\n%+v\n%+v", ev, again)
		}
	})
}
