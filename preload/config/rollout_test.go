package config_test

import (
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

func TestParseRollout(t *testing.T) {
	def := config.DefaultRollout()
	for _, tc := range []struct {
		name, yaml string
		want       config.Rollout
	}{
		{"left out", "images: []\n", def},
		{"a count", "images: []\nrollout: {maxNodesPulling: 5}\n", config.Rollout{
			MaxNodesPulling: config.NodeCount{N: 5}, FirstNodesTimeout: def.FirstNodesTimeout,
		}},
		{"a percentage", "images: []\nrollout: {maxNodesPulling: 10%}\n", config.Rollout{
			MaxNodesPulling: config.NodeCount{N: 10, Percent: true}, FirstNodesTimeout: def.FirstNodesTimeout,
		}},
		{"quoted percentage", "images: []\nrollout: {maxNodesPulling: \"100%\"}\n", def},
		{"every key", "images: []\nrollout:\n  maxNodesPulling: 1\n  firstNodes: 2\n  firstNodesTimeout: 90s\n", config.Rollout{
			MaxNodesPulling: config.NodeCount{N: 1}, FirstNodes: 2, FirstNodesTimeout: 90 * time.Second,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("images.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Rollout != tc.want {
				t.Errorf("rollout = %+v, want %+v", cfg.Rollout, tc.want)
			}
		})
	}
}

func TestParseRolloutErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"zero", "images: []\nrollout: {maxNodesPulling: 0}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be between 1 and 100000, got 0`}},
		{"negative", "images: []\nrollout: {maxNodesPulling: -3}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be between 1 and 100000, got -3`}},
		{"zero percent", "images: []\nrollout: {maxNodesPulling: 0%}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be a percentage between 1% and 100%, got "0%"`}},
		{"over 100 percent", "images: []\nrollout: {maxNodesPulling: 150%}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be a percentage between 1% and 100%, got "150%"`}},
		{"fraction percent", "images: []\nrollout: {maxNodesPulling: 2.5%}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be an integer or a percentage such as "10%", got string "2.5%"`}},
		{"word", "images: []\nrollout: {maxNodesPulling: all}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be an integer or a percentage such as "10%", got string "all"`}},
		{"float", "images: []\nrollout: {maxNodesPulling: 2.5}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be an integer or a percentage such as "10%", got number 2.5`}},
		{"list", "images: []\nrollout: {maxNodesPulling: [1]}\n", []string{`images.yaml:2: rollout.maxNodesPulling: must be an integer or a percentage such as "10%", got a list`}},
		{"firstNodes negative", "images: []\nrollout: {firstNodes: -1}\n", []string{`images.yaml:2: rollout.firstNodes: must be between 0 and 100000, got -1`}},
		{"firstNodesTimeout short", "images: []\nrollout: {firstNodesTimeout: 10ms}\n", []string{`images.yaml:2: rollout.firstNodesTimeout: must be at least 1s, got 10ms`}},
		{"unknown key", "images: []\nrollout:\n  maxNodesPuling: 3\n", []string{`images.yaml:3: rollout.maxNodesPuling: unknown key; did you mean maxNodesPulling?`}},
		{"not a mapping", "images: []\nrollout: 5\n", []string{`images.yaml:2: rollout: must be a mapping, got integer 5`}},
		{"every problem", "images: []\nrollout:\n  maxNodesPulling: 0\n  firstNodes: x\n", []string{
			`images.yaml:3: rollout.maxNodesPulling: must be between 1 and 100000, got 0`,
			`images.yaml:4: rollout.firstNodes: must be an integer, got string "x"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkProblems(t, problems(t, tc.yaml), tc.want)
		})
	}
}

func TestNodeCountOf(t *testing.T) {
	for _, tc := range []struct {
		c           config.NodeCount
		nodes, want int
		unlimited   bool
	}{
		{config.NodeCount{N: 5}, 500, 5, false},
		{config.NodeCount{N: 5}, 2, 5, false},
		{config.NodeCount{N: 10, Percent: true}, 500, 50, false},
		{config.NodeCount{N: 10, Percent: true}, 15, 2, false}, // rounds up
		{config.NodeCount{N: 1, Percent: true}, 3, 1, false},   // never 0
		{config.NodeCount{N: 1, Percent: true}, 0, 1, false},
		{config.NodeCount{N: 100, Percent: true}, 7, 7, true},
	} {
		if got := tc.c.Of(tc.nodes); got != tc.want {
			t.Errorf("%s of %d = %d, want %d", tc.c, tc.nodes, got, tc.want)
		}
		if got := tc.c.Unlimited(); got != tc.unlimited {
			t.Errorf("%s unlimited = %v", tc.c, got)
		}
	}
}
