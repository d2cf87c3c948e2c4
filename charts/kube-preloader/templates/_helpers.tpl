{{/*
The host layouts the agent's mounts follow, one per distribution: where the
runtime's socket directory, containerd's config directory (its config file
and registry hosts directories) and containerd's root (the image
filesystem, for the disk budget) are. Every mount is read-only and at the
host's own path, because containerd's config names host paths (config_path,
imports); only the image filesystem is mounted elsewhere. kubeadm keeps
DirectoryOrCreate, so that one manifest serves containerd and CRI-O nodes;
the other layouts use Directory, so a wrong distribution value fails the
pod's start with the path it missed instead of creating directories a later
install of the real distribution would find. noderuntime/layout.go is the
agent's side of the same table. credentialProviders: where the distribution
puts the kubelet's credential provider config and plugins when it is told
to use them (none of them does by default), for credentialProviders.enabled.
*/}}
{{- define "preloader.layouts" -}}
kubeadm:
  mounts:
    - {name: containerd, path: /run/containerd, type: DirectoryOrCreate}
    - {name: crio, path: /run/crio, type: DirectoryOrCreate}
    - {name: containerd-config, path: /etc/containerd, type: DirectoryOrCreate}
    - {name: docker-certs, path: /etc/docker/certs.d, type: DirectoryOrCreate}
    - {name: image-verifiers, path: /opt/containerd/image-verifier/bin, type: DirectoryOrCreate}
  imagefs: /var/lib/containerd/tmpmounts
  imagefsType: DirectoryOrCreate
  kubeletConfig: /var/lib/kubelet/config.yaml
k3s:
  mounts:
    - {name: containerd, path: /run/k3s/containerd, type: Directory}
    - {name: containerd-config, path: /var/lib/rancher/k3s/agent/etc/containerd, type: Directory}
    - {name: image-verifiers, path: /opt/containerd/image-verifier/bin, type: DirectoryOrCreate}
  imagefs: /var/lib/rancher/k3s/agent/containerd/tmpmounts
  imagefsType: Directory
  credentialProviders: {config: /var/lib/rancher/credentialprovider/config.yaml, binDir: /var/lib/rancher/credentialprovider/bin}
rke2:
  mounts:
    - {name: containerd, path: /run/k3s/containerd, type: Directory}
    - {name: containerd-config, path: /var/lib/rancher/rke2/agent/etc/containerd, type: Directory}
    - {name: image-verifiers, path: /opt/containerd/image-verifier/bin, type: DirectoryOrCreate}
  imagefs: /var/lib/rancher/rke2/agent/containerd/tmpmounts
  imagefsType: Directory
  credentialProviders: {config: /var/lib/rancher/credentialprovider/config.yaml, binDir: /var/lib/rancher/credentialprovider/bin}
microk8s:
  mounts:
    - {name: containerd, path: /var/snap/microk8s/common/run, type: Directory}
    - {name: containerd-config, path: /var/snap/microk8s/current/args, type: Directory}
    - {name: image-verifiers, path: /opt/containerd/image-verifier/bin, type: DirectoryOrCreate}
  imagefs: /var/snap/microk8s/common/var/lib/containerd/tmpmounts
  imagefsType: Directory
talos:
  mounts:
    - {name: containerd, path: /run/containerd, type: Directory}
    - {name: containerd-config, path: /etc/cri, type: Directory}
  imagefs: /var/lib/containerd/tmpmounts
  imagefsType: Directory
  credentialProviders: {config: /etc/kubernetes/kubelet-credentialproviderconfig.yaml, binDir: /usr/local/lib/kubelet/credentialproviders}
{{- end -}}

{{/*
The distribution in effect. auto asks the cluster: at install and upgrade
lookup returns its Nodes; without a cluster (helm template) it returns
nothing and the answer is kubeadm, manifests/'s layout.
*/}}
{{- define "preloader.distribution" -}}
{{- if ne .Values.distribution "auto" -}}
{{- .Values.distribution -}}
{{- else -}}
{{- $found := dict -}}
{{- range (lookup "v1" "Node" "" "").items | default list -}}
{{- $d := "kubeadm" -}}
{{- $annotations := keys (.metadata.annotations | default dict) | join " " -}}
{{- if contains "rke2.io/" $annotations -}}
{{- $d = "rke2" -}}
{{- else if contains "k3s.io/" $annotations -}}
{{- $d = "k3s" -}}
{{- else if hasKey (.metadata.labels | default dict) "microk8s.io/cluster" -}}
{{- $d = "microk8s" -}}
{{- else if hasPrefix "Talos" ((.status).nodeInfo).osImage -}}
{{- $d = "talos" -}}
{{- end -}}
{{- $_ := set $found $d (append (get $found $d | default list) .metadata.name) -}}
{{- end -}}
{{- if gt (len $found) 1 -}}
{{- $parts := list -}}
{{- range $d, $nodes := $found -}}
{{- $parts = append $parts (printf "%s (%s)" $d (join ", " (slice $nodes 0 (min 3 (len $nodes))))) -}}
{{- end -}}
{{- fail (printf "distribution auto: the cluster's Nodes are of several layouts: %s; set distribution, with one release per layout and a nodeSelector each" (join "; " $parts)) -}}
{{- end -}}
{{- keys $found | first | default "kubeadm" -}}
{{- end -}}
{{- end -}}

{{- define "preloader.layout" -}}
{{- $layouts := include "preloader.layouts" . | fromYaml -}}
{{- toYaml (get $layouts (include "preloader.distribution" .)) -}}
{{- end -}}

{{/*
The kubelet's credential provider config and plugin directory the agent
uses, as YAML {config, binDir, configType}, or nothing when off. On when
enabled or either path is set; a path left empty is the layout's. The
config is a file or a directory of files, as for the kubelet; a hostPath
type can check only one of them, so a path ending in .json, .yaml or .yml
is a File and any other a Directory. Both types fail the pod's start
where nothing is at the path: a type-less hostPath would have containerd
create a directory there, and an ...OrCreate one an empty file or
directory, which the kubelet would later find.
*/}}
{{- define "preloader.credentialProviders" -}}
{{- $v := .Values.credentialProviders -}}
{{- if or $v.enabled $v.config $v.binDir -}}
{{- $layout := include "preloader.layout" . | fromYaml -}}
{{- $known := $layout.credentialProviders | default dict -}}
{{- $config := $v.config | default $known.config -}}
{{- $binDir := $v.binDir | default $known.binDir -}}
{{- if not (and $config $binDir) -}}
{{- fail (printf "credentialProviders: set both config and binDir, the paths the node's kubelet has in --image-credential-provider-config and --image-credential-provider-bin-dir (distribution %s has no default for them; see docs/operations/credential-providers.md)" (include "preloader.distribution" .)) -}}
{{- end -}}
config: {{ $config | quote }}
binDir: {{ $binDir | quote }}
configType: {{ ternary "File" "Directory" (regexMatch "\\.(json|yaml|yml)$" $config) }}
{{- end -}}
{{- end -}}

{{- define "preloader.configMapName" -}}
{{- .Values.existingConfigMap | default "preloader-config" -}}
{{- end -}}

{{- define "preloader.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Labels: the project's, and Helm's own, which make manifests leaves out of
manifests/ (objects applied with kubectl belong to no release).
*/}}
{{- define "preloader.labels" -}}
app.kubernetes.io/name: preloader
app.kubernetes.io/part-of: kube-preloader
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "preloader.agentUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:preloader
{{- end -}}

{{- define "preloader.controllerUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:preloader-controller
{{- end -}}

{{/*
The controller runs when controller.enabled says so, or, unset, when the
chart's config has a workloads section (a string config: a line starting
with "workloads:").
*/}}
{{- define "preloader.controllerEnabled" -}}
{{- $on := .Values.controller.enabled -}}
{{- if kindIs "invalid" $on -}}
{{- if .Values.existingConfigMap -}}
{{- $on = false -}}
{{- else if kindIs "string" .Values.config -}}
{{- $on = regexMatch "(?m)^workloads:" .Values.config -}}
{{- else -}}
{{- $on = hasKey .Values.config "workloads" -}}
{{- end -}}
{{- end -}}
{{- $on -}}
{{- end -}}

{{- define "preloader.controllerReadsServiceAccounts" -}}
{{- $on := .Values.controller.readServiceAccounts -}}
{{- if kindIs "invalid" $on -}}
{{- $on = false -}}
{{- if .Values.existingConfigMap -}}
{{- else if kindIs "string" .Values.config -}}
{{- $on = regexMatch "usePullSecrets:\\s*true" .Values.config -}}
{{- else -}}
{{- range (.Values.config.workloads | default list) -}}
{{- if and (kindIs "map" .) .usePullSecrets -}}
{{- $on = true -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $on -}}
{{- end -}}

{{/* Where the agent finds the verify keys of the chart's value verify.keys. */}}
{{- define "preloader.verifyKeysDir" -}}
/etc/preloader/keys
{{- end }}
