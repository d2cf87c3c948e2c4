package preload

import (
	"crypto/sha256"
	"encoding/hex"
)

// ConfigHash identifies a config's content, so that status can say which
// config it describes.
func ConfigHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:12]
}
