package preload

import "time"

// SetLayerSizing shortens pullVia auto's wait for layer sizes for a test.
func SetLayerSizing(d time.Duration) (restore func()) {
	old := layerSizing
	layerSizing = d
	return func() { layerSizing = old }
}
