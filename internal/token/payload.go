package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// memberNames are the JSON names of wirePayload's fields, exactly.
var memberNames = map[string]bool{
	"v": true, "sub": true, "role": true, "ten": true, "skills": true,
	"name": true, "iat": true, "exp": true, "kid": true,
}

// parsePayload decodes a chat token payload with encoding/json. It checks
// syntax, member names and types; Signer.check then applies the rules on
// values, among them that the required members are present.
//
// Verify calls it only after the MAC matched, so the bytes are exactly what
// the holder of the key wrote; speed is not a reason to read them with
// anything but the standard library. For the same reason a member given
// twice is not refused: encoding/json lets the later one win, and since the
// MAC covers the exact bytes and only the key holder can mint a token, a
// repeated member can only come from the key holder's own encoder, not from
// an attacker playing two readers against each other.
func parsePayload(b []byte) (wirePayload, error) {
	var p wirePayload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return wirePayload{}, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return wirePayload{}, fmt.Errorf("%w: payload: data after the object", ErrMalformed)
	}
	// encoding/json matches member names without regard to case, so "SUB"
	// would fill sub; the names of the format are exact. The payload is
	// known to be one valid object by now.
	var names map[string]json.RawMessage
	if err := json.Unmarshal(b, &names); err != nil {
		return wirePayload{}, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	for name := range names {
		if !memberNames[name] {
			return wirePayload{}, fmt.Errorf("%w: payload: unknown member %q (names are case-sensitive)", ErrMalformed, name)
		}
	}
	if len(p.Skills) == 0 {
		p.Skills = nil // [] is the same as absent
	}
	return p, nil
}
