package workloads

import (
	"fmt"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// Config is the config the agents follow for a ConfigMap's data: its key
// imagesKey parsed, with the images of Key merged in when the controller
// has written them. where names the ConfigMap in errors ("configmap
// NS/NAME").
func Config(where, imagesKey string, data map[string]string) (*config.Config, error) {
	cfg, err := config.Parse(fmt.Sprintf("%s %s", where, imagesKey), []byte(data[imagesKey]))
	if err != nil {
		return nil, err
	}
	derived, ok := data[Key]
	if !ok {
		return cfg, nil
	}
	l, err := Decode(fmt.Sprintf("%s %s", where, Key), derived)
	if err != nil {
		return nil, err
	}
	Merge(cfg, l)
	return cfg, nil
}

// Merge adds to cfg the images of l that its own list does not name: an
// entry someone wrote in images.yaml wins whole (its nodeSelector, its
// credentials, its prune), since it says more than a workload can.
// Derived images take the config's defaults.
func Merge(cfg *config.Config, l List) {
	listed := make(map[string]bool, len(cfg.Images))
	for _, img := range cfg.Images {
		listed[img.Name] = true
	}
	for _, d := range l.Images {
		name, err := config.NormalizeRef(d.Image)
		if err != nil || listed[name] {
			continue // Decode has refused bad references already
		}
		listed[name] = true
		img := config.Image{
			Ref:         d.Image,
			Name:        name,
			PullSecrets: d.PullSecrets,
			Workloads:   d.Workloads,
			Refresh:     cfg.Refresh,
		}
		for _, t := range d.NodeSelectorTerms {
			img.NodeAffinity = append(img.NodeAffinity, t.NodeSelectorTerm())
		}
		cfg.Images = append(cfg.Images, img)
	}
}

// Hash is the config hash of a ConfigMap's data, the one the agents
// report: of images.yaml alone while there is no derived list, so that
// hashes stay what they were without a controller, else of both keys.
func Hash(data map[string]string, imagesKey string) string {
	derived, ok := data[Key]
	if !ok {
		return config.Hash([]byte(data[imagesKey]))
	}
	return config.Hash([]byte(data[imagesKey] + "\x00" + derived))
}
