package atrest

import (
	"encoding/json"
	"fmt"
)

// A wrapped key file keeps one node-local key (the session cache's seal
// key) wrapped by the master key, so that a copy of the data directory
// without the master key file reveals nothing:
//
//	{"v":1,"purpose":"sessionstore","master":"<master id>","wrapped":"<base64>"}
//
// The wrap's additional data is "unigate/atrest/v1/local-key" ‖ 0x00 ‖
// purpose, so a file cannot be used for another purpose.
type wrappedFile struct {
	V       int    `json:"v"`
	Purpose string `json:"purpose"`
	Master  string `json:"master"`
	Wrapped []byte `json:"wrapped"`
}

const labelLocalKey = "unigate/atrest/v1/local-key"

func localKeyAAD(purpose string) []byte {
	return append(append([]byte(labelLocalKey), 0), purpose...)
}

// ReadWrappedKeyFile returns the key kept in the wrapped key file at path
// for purpose, and the id of the master key that wraps it. Errors: one
// wrapping fs.ErrNotExist when there is no file; ErrInsecureKeyFile;
// ErrKeyFile for a malformed file or another purpose; ErrWrongMasterKey
// when masters lacks the file's master key or it does not unwrap.
func ReadWrappedKeyFile(path, purpose string, masters *MasterKeys) (key []byte, masterID string, err error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, "", err
	}
	var f wrappedFile
	if err := json.Unmarshal(data, &f); err != nil || f.V != 1 || f.Master == "" || len(f.Wrapped) == 0 {
		return nil, "", fmt.Errorf("%w: %s is not a wrapped key file", ErrKeyFile, path)
	}
	if f.Purpose != purpose {
		return nil, "", fmt.Errorf("%w: %s holds a key for %q, not %q", ErrKeyFile, path, f.Purpose, purpose)
	}
	w := masters.Get(f.Master)
	if w == nil {
		return nil, "", masters.unknownMaster("the key in "+path, f.Master)
	}
	key, err = w.Unwrap(f.Wrapped, localKeyAAD(purpose))
	if err != nil {
		return nil, "", fmt.Errorf("%w: the key in %s does not unwrap with master key %s (%v)", ErrWrongMasterKey, path, f.Master, err)
	}
	return key, f.Master, nil
}

// WriteWrappedKeyFile wraps key for purpose with w and writes it to path
// (0600, replaced atomically, directories 0700).
func WriteWrappedKeyFile(path, purpose string, key []byte, w KeyWrapper) error {
	wrapped, err := w.Wrap(key, localKeyAAD(purpose))
	if err != nil {
		return fmt.Errorf("atrest: wrapping the key for %s: %w", path, err)
	}
	data, err := json.Marshal(wrappedFile{V: 1, Purpose: purpose, Master: w.ID(), Wrapped: wrapped})
	if err != nil {
		return err
	}
	return writeKeyFile(path, append(data, '\n'), true)
}
