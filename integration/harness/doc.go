// Package harness starts real components for integration tests. containerd
// (Debian's 1.6 or a built 2.x), the registry and synthetic test images come
// from package daemons, named here too (see its documentation); this package
// adds what needs the Kubernetes clients or is only for tests: kube-apiserver
// with etcd, whole nodes with a kubelet, the agent as a process, Prometheus,
// helm and a fault-injecting proxy.
//
//	ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd16})
//	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: "alice", Password: "…", TLS: true})
//
//	prom := harness.StartPrometheus(t, []string{"127.0.0.1:9741"}) // scrapes host:port/metrics every 1 s; returns once up and scraped 3 times
//	prom.CheckDashboard(t, "charts/kube-preloader/dashboards/kube-preloader.json") // every panel query returns series, or the test fails naming the panels
//	prom.Query(t, `preloader_images_present`)                                  // an instant query's series
//	harness.CheckMetricsLint(t, body)                                             // promtool check metrics on a /metrics body
//
//	hold := harness.NewHold(64<<10, isLayerGet)                      // bodies stop after 64 KiB until hold.Release()
//	p := harness.StartProxy(t, reg.Host, harness.ProxyOptions{Hold: hold}) // p.Host; hold.Held() counts the stopped ones
//	f := harness.StartTLSProxy(t, reg, harness.ProxyOptions{Served: note})  // f.URL is https with reg's certificate; note(r, status, n) sees each request
//	sp := harness.StartSocketProxy(t, ctrd.Address)                    // sp.Path, for --containerd-address
//	sp.Limit(8 << 20)                                                  // client bytes past 8 MiB wait (sp.Holding()); Limit(-1) lifts it
//
// Everything listens on 127.0.0.1, lives in its own temporary directory and
// is torn down by t.Cleanup. Missing prerequisites skip a test, or fail it
// when CI=true or PRELOADER_REQUIRE_INTEGRATION=1.
package harness
