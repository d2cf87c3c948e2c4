package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Rollout bounds how the agents of a cluster pull from registries at once
// (rollout: in images.yaml). `preloader once` runs on one node and has no
// cluster to coordinate with: it ignores this.
type Rollout struct {
	// MaxNodesPulling is how many nodes may pull from a registry at once:
	// a count, or a percentage of the nodes.
	MaxNodesPulling NodeCount
	// FirstNodes, if more than 0, is how many nodes pull an image new to
	// the cluster before the others do (warming a pull-through mirror);
	// the others wait for them at most FirstNodesTimeout.
	FirstNodes        int
	FirstNodesTimeout time.Duration
}

// NodeCount is a number of nodes, absolute or a percentage of a total.
type NodeCount struct {
	N       int
	Percent bool
}

func (c NodeCount) String() string {
	if c.Percent {
		return strconv.Itoa(c.N) + "%"
	}
	return strconv.Itoa(c.N)
}

// Of is the count for a cluster of nodes: a percentage rounds up, so that
// every cluster gets at least one slot.
func (c NodeCount) Of(nodes int) int {
	if !c.Percent {
		return c.N
	}
	return max(1, (nodes*c.N+99)/100)
}

// Unlimited says that no coordination is needed: 100% of the nodes may
// pull at once.
func (c NodeCount) Unlimited() bool { return c.Percent && c.N >= 100 }

const (
	maxNodeCount             = 100000
	defaultFirstNodesTimeout = 10 * time.Minute
)

// DefaultRollout is no coordination: every node pulls when it wants.
func DefaultRollout() Rollout {
	return Rollout{MaxNodesPulling: NodeCount{N: 100, Percent: true}, FirstNodesTimeout: defaultFirstNodesTimeout}
}

// Coordinated says whether the agents must coordinate at all.
func (r Rollout) Coordinated() bool { return !r.MaxNodesPulling.Unlimited() || r.FirstNodes > 0 }

// rollout reads rollout: {maxNodesPulling, firstNodes, firstNodesTimeout}.
func (p *parser) rollout(n *yaml.Node, path string, dst *Rollout) {
	p.fields(n, path, setters{
		"maxNodesPulling":   func(v *yaml.Node, path string) { p.nodeCount(v, path, &dst.MaxNodesPulling) },
		"firstNodes":        func(v *yaml.Node, path string) { p.intIn(v, path, 0, maxNodeCount, &dst.FirstNodes) },
		"firstNodesTimeout": func(v *yaml.Node, path string) { p.duration(v, path, time.Second, &dst.FirstNodesTimeout) },
	})
}

// nodeCount takes an integer of at least 1 or a string "P%" with P from 1
// to 100: "0" or "0%" would stop every pull for good, which no one means.
func (p *parser) nodeCount(n *yaml.Node, path string, dst *NodeCount) {
	const want = `an integer or a percentage such as "10%"`
	if n.Kind != yaml.ScalarNode {
		p.typeError(n, path, want)
		return
	}
	switch n.ShortTag() {
	case "!!int":
		p.intIn(n, path, 1, maxNodeCount, &dst.N)
		dst.Percent = false
	case "!!str":
		s, ok := strings.CutSuffix(n.Value, "%")
		v, err := strconv.Atoi(s)
		if !ok || err != nil || strings.TrimSpace(s) != s || strings.HasPrefix(s, "+") {
			p.errorf(n, path, "must be %s, got %s", want, describe(n))
			return
		}
		if v < 1 || v > 100 {
			p.errorf(n, path, "must be a percentage between 1%% and 100%%, got %s", show(n.Value))
			return
		}
		*dst = NodeCount{N: v, Percent: true}
	default:
		p.errorf(n, path, "must be %s, got %s", want, describe(n))
	}
}

// Describe says in a few words what r does, for logs.
func (r Rollout) Describe() string {
	if !r.Coordinated() {
		return "uncoordinated"
	}
	s := fmt.Sprintf("maxNodesPulling %s", r.MaxNodesPulling)
	if r.FirstNodes > 0 {
		s += fmt.Sprintf(", firstNodes %d within %s", r.FirstNodes, r.FirstNodesTimeout)
	}
	return s
}
