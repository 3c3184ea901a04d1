package llq

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// stateKeyLen is the size of the key that authenticates the state file.
const stateKeyLen = 32

// stateKey returns the key kept beside the state file at path (path+".key"),
// creating it when there is none. fresh reports a new key: no file written
// before can be trusted then.
//
// Why a key: the file tells llq where to send events. Someone able to write
// it, but not to read the key, cannot make llq send a single packet to an
// address of their choosing, since a file whose MAC does not verify is
// ignored whole. Keep the key readable by llq alone (it is created 0600).
func stateKey(path string) (key []byte, fresh bool, err error) {
	kp := path + ".key"
	key, err = readLimited(kp, stateKeyLen+1)
	if err == nil && len(key) == stateKeyLen {
		return key, false, nil
	}
	if err == nil {
		log.Warningf("state key %s is %d bytes, not %d: replacing it, so the state file cannot be trusted", kp, len(key), stateKeyLen)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	key = make([]byte, stateKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, false, err
	}
	if err := writeAtomic(kp, key, 0o600); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// readLimited reads a whole file of at most max bytes.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// readState loads and checks the state file. A missing file is
// fs.ErrNotExist; anything else wrong with it is an error saying what.
func readState(path string, key []byte) (*snapshot, error) {
	b, err := readLimited(path, stateMaxSize)
	if err != nil {
		return nil, err
	}
	return decodeState(b, key)
}

// tempPattern names writeAtomic's temporary files for path.
func tempPattern(path string) string { return "." + filepath.Base(path) + ".tmp*" }

// removeTemps deletes the temporary files a crash in the middle of
// writeAtomic left beside path.
func removeTemps(path string) {
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), tempPattern(path)))
	for _, f := range left {
		os.Remove(f)
	}
}

// writeAtomic replaces path with data so that a crash at any moment leaves
// either the old file or the new one, whole: write a temporary file in the
// same directory, flush it to disk, rename it over path, and flush the
// directory so that the rename itself is durable.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPattern(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
