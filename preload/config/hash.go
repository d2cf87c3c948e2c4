package config

import (
	"crypto/sha256"
	"encoding/hex"
)

// Hash identifies a config's content, so that status can say which
// config it describes.
func Hash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])[:12]
}
