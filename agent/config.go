package agent

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// loadedConfig is a config that parsed, with the hash of the bytes it came
// from: the hash is what the status annotation and `preloader warm` name.
type loadedConfig struct {
	*config.Config
	hash string
}

// configState remembers the last good config and what has been said about
// the ConfigMap, so that each problem is explained once, not every sync.
type configState struct {
	good    *loadedConfig
	badHash string // content last reported invalid
	// unlistedHash is content whose workloads section preloader
	// controller has not listed yet (no workloads.yaml): not applied,
	// since the list it would give is not the whole list.
	unlistedHash string
	gone         bool // the ConfigMap's absence has been reported
	waitLogged   bool // "no ConfigMap yet" has been logged
}

// currentConfig returns the config to apply: the ConfigMap's, or, when it is
// invalid or gone, the last good one; nil before any config was good.
func (a *Agent) currentConfig() *loadedConfig {
	cs := &a.state.config
	obj, exists, err := a.configMaps.GetStore().GetByKey(a.cmKey)
	cm, _ := obj.(*corev1.ConfigMap)
	if err != nil || !exists || cm == nil {
		a.configMissing()
		return cs.good
	}
	if cs.gone {
		a.log.Info("ConfigMap is back", "configmap", a.cmKey)
		cs.gone = false
	}

	_, ok := cm.Data[ConfigKey]
	hash := workloads.Hash(cm.Data, ConfigKey)
	if !ok {
		hash = "no " + ConfigKey // never a hash, so it cannot match content
	}
	switch {
	case cs.good != nil && hash == cs.good.hash:
		return cs.good
	case hash == cs.badHash:
		return cs.good // invalid, and already explained
	case hash == cs.unlistedHash:
		return cs.good // waiting for the controller, already said
	}

	var cfg *config.Config
	if !ok {
		err = fmt.Errorf("ConfigMap %s has no key %s", a.cmKey, ConfigKey)
	} else {
		cfg, err = a.parse(cm.Data)
	}
	if err != nil {
		cs.badHash, cs.unlistedHash = hash, ""
		a.configInvalid(cm, hash, err)
		return cs.good
	}
	if _, listed := cm.Data[workloads.Key]; !listed && len(cfg.Workloads) > 0 {
		// Applied now, a config whose images come from workloads would
		// make a new node ready, and lift its taint, with none of them.
		cs.unlistedHash, cs.badHash = hash, ""
		keeping := "nothing is preloaded until it does"
		if cs.good != nil {
			keeping = "keeping the last good config " + cs.good.hash
		}
		a.log.Warn("images.yaml selects workloads, but preloader controller has not listed their images yet (key "+workloads.Key+"); is it running?",
			"configmap", a.cmKey, "configHash", hash, "keeping", keeping)
		return cs.good
	}
	cs.good, cs.badHash, cs.unlistedHash = &loadedConfig{Config: cfg, hash: hash}, "", ""
	a.configLoaded.Store(true)
	a.log.Info("config loaded", "configmap", a.cmKey, "configHash", hash, "images", len(cfg.Images), "resync", cfg.Resync.String(), "rollout", cfg.Rollout.Describe())
	return cs.good
}

// parse reads images.yaml and adds the images `preloader controller`
// derived from workloads, when it has written them.
func (a *Agent) parse(data map[string]string) (*config.Config, error) {
	return workloads.Config("configmap "+a.cmKey, ConfigKey, data)
}

// configInvalid explains a bad config in the log and in Events on the
// ConfigMap (where its author looks) and on the Node (where whoever
// wonders why the node is not ready looks).
func (a *Agent) configInvalid(cm *corev1.ConfigMap, hash string, err error) {
	keeping := "no config was loaded yet, so nothing is preloaded"
	if good := a.state.config.good; good != nil {
		keeping = "keeping the last good config " + good.hash
	}
	a.log.Error("invalid config", "configmap", a.cmKey, "configHash", hash, "keeping", keeping, "err", err)
	msg := fmt.Sprintf("the config is invalid; %s:\n%v", keeping, err)
	a.recorder.Event(cm, corev1.EventTypeWarning, ReasonInvalidConfig, eventMessage(msg))
	a.nodeEvent(corev1.EventTypeWarning, ReasonInvalidConfig, fmt.Sprintf("ConfigMap %s: %s", a.cmKey, msg))
}

// configMissing reports, once, that there is no ConfigMap: before the
// first config that only waits; after it, the last good config stays.
func (a *Agent) configMissing() {
	cs := &a.state.config
	cs.badHash, cs.unlistedHash = "", "" // a ConfigMap created again is judged afresh
	if cs.good == nil {
		if !cs.waitLogged {
			cs.waitLogged = true
			a.log.Warn("no ConfigMap yet: not ready, nothing is preloaded", "configmap", a.cmKey)
		}
		return
	}
	if cs.gone {
		return
	}
	cs.gone = true
	msg := fmt.Sprintf("ConfigMap %s is gone; keeping the last good config %s", a.cmKey, cs.good.hash)
	a.log.Warn(msg, "configmap", a.cmKey, "configHash", cs.good.hash)
	a.nodeEvent(corev1.EventTypeWarning, ReasonConfigMissing, msg)
}
