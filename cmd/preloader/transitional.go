package main

import "github.com/spf13/cobra"

// Until status and warm move to cobra flags.
func newStatusCmd() *cobra.Command {
	return &cobra.Command{Use: "status", Short: "Show every node's preload status", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStatus(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		}}
}

func newWarmCmd() *cobra.Command {
	return &cobra.Command{Use: "warm", Short: "Add an image to the agent's ConfigMap, optionally wait until nodes have it", DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWarm(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		}}
}
