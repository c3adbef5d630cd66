package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/xdpgate/xdpgate/internal/config"
)

const (
	baseDir   = "kubernetes"
	namespace = "xdpgate"
	imageName = "ghcr.io/xdpgate/xdpgate"
	bpffs     = "/sys/fs/bpf"
)

// kustomization holds the fields of kustomization.yaml the base uses;
// decoding it strictly makes any other field an error here, so the test
// knows every transformation kustomize applies.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
		IncludeTemplates bool              `json:"includeTemplates"`
	} `json:"labels"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
		Digest  string `json:"digest"`
	} `json:"images"`
}

// base is the Kustomize base as kustomize would see it, the generated
// ConfigMaps under their names before the hash suffix.
type base struct {
	kust            kustomization
	namespaces      []*corev1.Namespace
	serviceAccounts map[string]*corev1.ServiceAccount
	secrets         map[string]*corev1.Secret
	configMaps      map[string]*corev1.ConfigMap
	services        []*corev1.Service
	daemonSets      []*appsv1.DaemonSet
	cronJobs        []*batchv1.CronJob
}

// pod is one workload's pod template, for checks common to all of them.
type pod struct {
	name string
	spec *corev1.PodSpec
}

func (b *base) pods() []pod {
	var out []pod
	for _, d := range b.daemonSets {
		out = append(out, pod{"DaemonSet/" + d.Name, &d.Spec.Template.Spec})
	}
	for _, c := range b.cronJobs {
		out = append(out, pod{"CronJob/" + c.Name, &c.Spec.JobTemplate.Spec.Template.Spec})
	}
	return out
}

// decodeStrict decodes one YAML document into out as the API server's
// strict field validation does: duplicate keys, fields the API type does not
// have, and field names in the wrong case are errors.
func decodeStrict(doc []byte, out any) error {
	js, err := k8syaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, out)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// splitDocs splits a multi-document YAML file, dropping empty documents.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if strings.TrimSpace(stripComments(cur.String())) != "" {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if strings.TrimRight(sc.Text(), " \t") == "---" {
			flush()
			continue
		}
		cur.WriteString(sc.Text())
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

func loadBase(t *testing.T) *base {
	t.Helper()
	b := &base{
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		secrets:         map[string]*corev1.Secret{},
		configMaps:      map[string]*corev1.ConfigMap{},
	}
	raw, err := os.ReadFile(filepath.Join(baseDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeStrict(raw, &b.kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	for _, res := range b.kust.Resources {
		data, err := os.ReadFile(filepath.Join(baseDir, res))
		if err != nil {
			t.Fatalf("resource %s: %v", res, err)
		}
		for i, doc := range splitDocs(data) {
			if err := b.add(doc); err != nil {
				t.Fatalf("%s, document %d: %v", res, i+1, err)
			}
		}
	}
	for _, g := range b.kust.ConfigMapGenerator {
		cm := &corev1.ConfigMap{Data: map[string]string{}}
		cm.Name, cm.Namespace = g.Name, b.kust.Namespace
		for _, f := range g.Files {
			data, err := os.ReadFile(filepath.Join(baseDir, f))
			if err != nil {
				t.Fatalf("configMapGenerator %s: %v", g.Name, err)
			}
			cm.Data[path.Base(f)] = string(data)
		}
		if b.configMaps[cm.Name] != nil {
			t.Fatalf("ConfigMap %s defined twice", cm.Name)
		}
		b.configMaps[cm.Name] = cm
	}
	return b
}

func (b *base) add(doc []byte) error {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := k8syaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var obj interface {
		GetName() string
		GetNamespace() string
	}
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		ns := &corev1.Namespace{}
		b.namespaces, obj = append(b.namespaces, ns), ns
	case "v1 ServiceAccount":
		sa := &corev1.ServiceAccount{}
		obj = sa
		defer func() { b.serviceAccounts[sa.Name] = sa }()
	case "v1 Secret":
		s := &corev1.Secret{}
		obj = s
		defer func() { b.secrets[s.Name] = s }()
	case "v1 ConfigMap":
		cm := &corev1.ConfigMap{}
		obj = cm
		defer func() { b.configMaps[cm.Name] = cm }()
	case "v1 Service":
		s := &corev1.Service{}
		b.services, obj = append(b.services, s), s
	case "apps/v1 DaemonSet":
		d := &appsv1.DaemonSet{}
		b.daemonSets, obj = append(b.daemonSets, d), d
	case "batch/v1 CronJob":
		c := &batchv1.CronJob{}
		b.cronJobs, obj = append(b.cronJobs, c), c
	default:
		return fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
	}
	if err := decodeStrict(doc, obj); err != nil {
		return fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if obj.GetName() == "" {
		return fmt.Errorf("%s without a name", tm.Kind)
	}
	if tm.Kind != "Namespace" && obj.GetNamespace() != namespace {
		return fmt.Errorf("%s %s: namespace %q, want %q", tm.Kind, obj.GetName(), obj.GetNamespace(), namespace)
	}
	return nil
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func (b *base) daemonSet(t *testing.T, name string) *appsv1.DaemonSet {
	t.Helper()
	for _, d := range b.daemonSets {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no DaemonSet %s", name)
	return nil
}

func (b *base) cronJob(t *testing.T, name string) *batchv1.CronJob {
	t.Helper()
	for _, c := range b.cronJobs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no CronJob %s", name)
	return nil
}

// fileSource is where a file a container reads comes from.
type fileSource struct {
	kind, name, key string // "Secret" or "ConfigMap", object name, data key
}

// mountedFile finds the Secret or ConfigMap key that a container sees at
// file, through its volume mounts.
func mountedFile(spec *corev1.PodSpec, c *corev1.Container, file string) (fileSource, error) {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		if m.SubPath != "" {
			return fileSource{}, fmt.Errorf("%s is under subPath mount %s", file, m.MountPath)
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			switch {
			case v.Secret != nil:
				if key, ok := itemKey(v.Secret.Items, rel); ok {
					return fileSource{"Secret", v.Secret.SecretName, key}, nil
				}
			case v.ConfigMap != nil:
				if key, ok := itemKey(v.ConfigMap.Items, rel); ok {
					return fileSource{"ConfigMap", v.ConfigMap.Name, key}, nil
				}
			case v.Projected != nil:
				for _, src := range v.Projected.Sources {
					if src.Secret != nil {
						if key, ok := itemKey(src.Secret.Items, rel); ok {
							return fileSource{"Secret", src.Secret.Name, key}, nil
						}
					}
					if src.ConfigMap != nil {
						if key, ok := itemKey(src.ConfigMap.Items, rel); ok {
							return fileSource{"ConfigMap", src.ConfigMap.Name, key}, nil
						}
					}
				}
			}
			return fileSource{}, fmt.Errorf("%s: volume %s does not provide %q", file, v.Name, rel)
		}
		return fileSource{}, fmt.Errorf("%s: mount %s names no volume", file, m.Name)
	}
	return fileSource{}, fmt.Errorf("%s is not under any volume mount of container %s", file, c.Name)
}

// itemKey maps a file name inside a Secret or ConfigMap volume to its key:
// through items when they are listed (only those files exist), else the
// file name is the key.
func itemKey(items []corev1.KeyToPath, rel string) (string, bool) {
	if len(items) == 0 {
		return rel, !strings.Contains(rel, "/")
	}
	for _, it := range items {
		if it.Path == rel {
			return it.Key, true
		}
	}
	return "", false
}

// read returns the content of a mounted file from the base's objects.
func (b *base) read(src fileSource) (string, error) {
	switch src.kind {
	case "Secret":
		s, ok := b.secrets[src.name]
		if !ok {
			return "", fmt.Errorf("Secret %s is not in the base", src.name)
		}
		if v, ok := s.StringData[src.key]; ok {
			return v, nil
		}
		if v, ok := s.Data[src.key]; ok {
			return string(v), nil
		}
		return "", fmt.Errorf("Secret %s has no key %q", src.name, src.key)
	case "ConfigMap":
		cm, ok := b.configMaps[src.name]
		if !ok {
			return "", fmt.Errorf("ConfigMap %s is not in the base", src.name)
		}
		v, ok := cm.Data[src.key]
		if !ok {
			return "", fmt.Errorf("ConfigMap %s has no key %q", src.name, src.key)
		}
		return v, nil
	}
	return "", fmt.Errorf("unknown source %+v", src)
}

// configArg returns the value of -c in a command line.
func configArg(t *testing.T, args []string) string {
	t.Helper()
	i := slices.Index(args, "-c")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("no -c PATH in %q", args)
	}
	return args[i+1]
}

// containerEnv gives the container's environment the values it would have
// on a node: literal values as they are, downward API fields as stand-ins.
func containerEnv(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	standIns := map[string]string{
		"status.hostIP":  "192.0.2.10",
		"status.podIP":   "192.0.2.10",
		"spec.nodeName":  "node-1",
		"metadata.name":  "xdpgate-abcde",
		"status.hostIPs": "192.0.2.10",
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			v, ok := standIns[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("env %s: no stand-in for field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		default:
			t.Fatalf("env %s: unsupported source %+v", e.Name, e.ValueFrom)
		}
	}
	return env
}

func TestEveryManifestIsListed(t *testing.T) {
	b := loadBase(t)
	listed := map[string]bool{"kustomization.yaml": true}
	for _, r := range b.kust.Resources {
		listed[r] = true
	}
	for _, g := range b.kust.ConfigMapGenerator {
		for _, f := range g.Files {
			listed[f] = true
		}
	}
	err := filepath.WalkDir(baseDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// An overlay (a directory with its own kustomization.yaml)
			// is built on its own, not listed in the base.
			if _, serr := os.Stat(filepath.Join(p, "kustomization.yaml")); p != baseDir && serr == nil {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(baseDir, p)
		if strings.HasSuffix(rel, ".yaml") && !listed[filepath.ToSlash(rel)] {
			t.Errorf("%s is in the base directory but not in kustomization.yaml", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.kust.Namespace != namespace {
		t.Errorf("kustomization namespace %q, want %q", b.kust.Namespace, namespace)
	}
	if len(b.namespaces) != 1 || b.namespaces[0].Name != namespace {
		t.Errorf("the base must create namespace %s once, has %d Namespace objects", namespace, len(b.namespaces))
	}
	for _, p := range b.pods() {
		if _, ok := b.serviceAccounts[p.spec.ServiceAccountName]; !ok {
			t.Errorf("%s: ServiceAccount %q is not in the base", p.name, p.spec.ServiceAccountName)
		}
	}
}

func TestImageTagConsistent(t *testing.T) {
	b := loadBase(t)
	if len(b.kust.Images) != 1 {
		t.Fatalf("kustomization images: %d entries, want 1", len(b.kust.Images))
	}
	img := b.kust.Images[0]
	if img.Name != imageName || img.NewName != "" || img.Digest != "" || img.NewTag == "" {
		t.Fatalf("kustomization image %+v, want name %s with a newTag only", img, imageName)
	}
	want := imageName + ":" + img.NewTag
	n := 0
	for _, p := range b.pods() {
		for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
			n++
			if c.Image != want {
				t.Errorf("%s container %s: image %q, want %q (the kustomization's tag)", p.name, c.Name, c.Image, want)
			}
		}
	}
	if n < 2 {
		t.Errorf("only %d containers found", n)
	}
}

func TestSecretsAndConfigMapsExist(t *testing.T) {
	b := loadBase(t)
	for _, p := range b.pods() {
		check := func(kind, name string, keys []corev1.KeyToPath, optional *bool) {
			if optional != nil && *optional {
				return
			}
			for _, k := range keys {
				if _, err := b.read(fileSource{kind, name, k.Key}); err != nil {
					t.Errorf("%s: %v", p.name, err)
				}
			}
			exists := b.secrets[name] != nil
			if kind == "ConfigMap" {
				exists = b.configMaps[name] != nil
			}
			if !exists {
				t.Errorf("%s: %s %s is not in the base", p.name, kind, name)
			}
		}
		for _, v := range p.spec.Volumes {
			switch {
			case v.Secret != nil:
				check("Secret", v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
			case v.ConfigMap != nil:
				check("ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
			case v.Projected != nil:
				for _, s := range v.Projected.Sources {
					if s.Secret != nil {
						check("Secret", s.Secret.Name, s.Secret.Items, s.Secret.Optional)
					}
					if s.ConfigMap != nil {
						check("ConfigMap", s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional)
					}
				}
			}
		}
		for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					r := e.ValueFrom.SecretKeyRef
					check("Secret", r.Name, []corev1.KeyToPath{{Key: r.Key}}, r.Optional)
				}
				if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
					r := e.ValueFrom.ConfigMapKeyRef
					check("ConfigMap", r.Name, []corev1.KeyToPath{{Key: r.Key}}, r.Optional)
				}
			}
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					check("Secret", e.SecretRef.Name, nil, e.SecretRef.Optional)
				}
				if e.ConfigMapRef != nil {
					check("ConfigMap", e.ConfigMapRef.Name, nil, e.ConfigMapRef.Optional)
				}
			}
		}
	}
	// The Secrets are placeholders, and say so.
	for name, s := range b.secrets {
		for k, v := range s.StringData {
			if !strings.Contains(v, "REPLACE-ME") {
				t.Errorf("Secret %s key %s does not look like a placeholder: keep real secrets out of the base", name, k)
			}
		}
		if len(s.Data) > 0 {
			t.Errorf("Secret %s: use stringData with placeholders, not data", name)
		}
	}
}

func TestDaemonSet(t *testing.T) {
	b := loadBase(t)
	ds := b.daemonSet(t, "xdpgate")
	spec := &ds.Spec.Template.Spec
	c := container(t, spec, "xdpgate")

	if !spec.HostNetwork {
		t.Error("hostNetwork must be true: XDP and nftables act on the node's interfaces")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint", spec.Tolerations)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 5 || *g > 60 {
		t.Errorf("terminationGracePeriodSeconds %v, want about 30", g)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || *u.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	sel := ds.Spec.Selector.MatchLabels
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the template's labels", k, v)
		}
	}

	// The host's bpffs at the same path, so that pins outlive the pod.
	var bpfVol string
	for _, v := range spec.Volumes {
		if v.HostPath != nil && v.HostPath.Path == bpffs {
			bpfVol = v.Name
			if typ := v.HostPath.Type; typ == nil || *typ != corev1.HostPathDirectory {
				t.Errorf("bpffs hostPath type is not Directory: the host's bpffs must exist, not be created")
			}
		}
	}
	if bpfVol == "" {
		t.Fatal("no hostPath volume for " + bpffs)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == bpfVol && m.MountPath == bpffs && !m.ReadOnly
	}) {
		t.Errorf("volume %s is not mounted read-write at %s", bpfVol, bpffs)
	}
	for _, m := range c.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("mount %s: Bidirectional propagation needs a privileged container", m.Name)
		}
	}

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("the agent must not be privileged: it has the capabilities it needs")
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("capabilities must drop ALL before adding")
	}
	for _, want := range []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"} {
		if !slices.Contains(sc.Capabilities.Add, want) {
			t.Errorf("capability %s missing", want)
		}
	}
	if slices.Contains(sc.Capabilities.Add, "SYS_ADMIN") {
		t.Error("SYS_ADMIN is not needed on kernels with CAP_BPF")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem should be true")
	}

	if got := c.Resources.Requests[corev1.ResourceMemory]; got.Cmp(resource.MustParse("64Mi")) != 0 {
		t.Errorf("memory request %s, want 64Mi", got.String())
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Error("no memory limit")
	}
}

// TestAgentConfig loads the ConfigMap's xdpgate.yaml with internal/config,
// as the agent in the DaemonSet would, and checks that the pod agrees with
// it: probes, Service, pin path, key file.
func TestAgentConfig(t *testing.T) {
	b := loadBase(t)
	ds := b.daemonSet(t, "xdpgate")
	spec := &ds.Spec.Template.Spec
	c := container(t, spec, "xdpgate")

	cfgPath := configArg(t, slices.Concat(c.Command, c.Args))
	if cfgPath != "/etc/xdpgate/xdpgate.yaml" {
		t.Errorf("config path %s, want /etc/xdpgate/xdpgate.yaml", cfgPath)
	}
	src, err := mountedFile(spec, c, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if src.kind != "ConfigMap" {
		t.Fatalf("config comes from a %s", src.kind)
	}
	body, err := b.read(src)
	if err != nil {
		t.Fatal(err)
	}

	// The key file, as the pod sees it.
	var raw struct {
		APIKeyFile string `yaml:"api_key_file"`
	}
	if err := yaml.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if raw.APIKeyFile == "" {
		t.Fatal("the agent config must read the LAPI key from api_key_file")
	}
	keySrc, err := mountedFile(spec, c, raw.APIKeyFile)
	if err != nil {
		t.Fatalf("api_key_file: %v", err)
	}
	if keySrc.kind != "Secret" {
		t.Errorf("api_key_file comes from a %s, want a Secret", keySrc.kind)
	}
	key, err := b.read(keySrc)
	if err != nil {
		t.Fatalf("api_key_file: %v", err)
	}

	// Load it for real: the container's environment for ${VAR}, and an
	// overlay pointing api_key_file at a copy of the Secret's value.
	env := containerEnv(t, c)
	for k, v := range env {
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "xdpgate.yaml")
	keyCopy := filepath.Join(dir, "api-key")
	for name, data := range map[string]string{
		p:              body,
		p + ".local":   "api_key_file: " + keyCopy + "\n",
		keyCopy:        key + "\n",
		dir + "/.keep": "",
	} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("the ConfigMap's xdpgate.yaml does not load: %v", err)
	}
	if cfg.APIKey.Reveal() != strings.TrimSpace(key) {
		t.Errorf("key from the Secret not loaded")
	}

	// Probes reach the listener the config opens.
	if !cfg.Prometheus.Enabled {
		t.Fatal("prometheus.enabled must be true: the probes use its listener")
	}
	addr, err := netip.ParseAddr(cfg.Prometheus.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	if addr.IsLoopback() {
		t.Errorf("prometheus.listen_addr %s: the kubelet cannot probe a loopback address", addr)
	}
	if !addr.IsUnspecified() && addr.String() != env["NODE_IP"] {
		t.Errorf("prometheus.listen_addr %s is neither 0.0.0.0 nor the node's address", addr)
	}
	port := func(what string, p intstr.IntOrString) int {
		if p.Type == intstr.Int {
			return p.IntValue()
		}
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort)
			}
		}
		t.Errorf("%s: no container port named %q", what, p.StrVal)
		return 0
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"startupProbe", c.StartupProbe, "/healthz"},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			if pr.name != "startupProbe" {
				t.Errorf("%s: want an httpGet probe", pr.name)
			}
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path {
			t.Errorf("%s path %q, want %q", pr.name, pr.probe.HTTPGet.Path, pr.path)
		}
		if got := port(pr.name, pr.probe.HTTPGet.Port); got != cfg.Prometheus.ListenPort {
			t.Errorf("%s port %d, but prometheus.listen_port is %d", pr.name, got, cfg.Prometheus.ListenPort)
		}
	}

	// The metrics Service selects these pods on the same port.
	var found bool
	for _, s := range b.services {
		var matches = len(s.Spec.Selector) > 0
		for k, v := range s.Spec.Selector {
			matches = matches && ds.Spec.Template.Labels[k] == v
		}
		if !matches {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.Name == "metrics" {
				found = true
				if int(sp.Port) != cfg.Prometheus.ListenPort || port("Service "+s.Name, sp.TargetPort) != cfg.Prometheus.ListenPort {
					t.Errorf("Service %s port %d -> %s, want %d", s.Name, sp.Port, sp.TargetPort.String(), cfg.Prometheus.ListenPort)
				}
			}
		}
	}
	if !found {
		t.Error("no Service with a port named metrics selects the agent's pods")
	}

	// Pins land on the host's bpffs.
	if !strings.HasPrefix(cfg.PinPath, bpffs+"/") {
		t.Errorf("pin_path %s is not on the mounted bpffs (%s)", cfg.PinPath, bpffs)
	}
}

// edgesyncKeys are edgesync's configuration keys.
var edgesyncKeys = map[string][]string{
	"": {"api_url", "api_key", "api_key_file", "update_frequency", "origins", "supported_decisions_types",
		"ipv6_prefix", "max_items", "origin_priority", "max_delete_ratio", "sync_interval", "log_level", "cloudflare"},
	"cloudflare":       {"account_id", "api_token", "api_token_file", "base_url", "list_name", "zones"},
	"cloudflare.zones": {"zone_id", "exclude_hosts"},
}

func TestCronJob(t *testing.T) {
	b := loadBase(t)
	cj := b.cronJob(t, "edgesync")
	if cj.Spec.Schedule != "*/2 * * * *" {
		t.Errorf("schedule %q, want every 2 minutes", cj.Spec.Schedule)
	}
	if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
		t.Errorf("concurrencyPolicy %q, want Forbid", cj.Spec.ConcurrencyPolicy)
	}
	if d := cj.Spec.StartingDeadlineSeconds; d == nil || *d <= 0 || *d > 120 {
		t.Errorf("startingDeadlineSeconds %v, want within the 2-minute period", d)
	}
	if cj.Spec.SuccessfulJobsHistoryLimit == nil || cj.Spec.FailedJobsHistoryLimit == nil {
		t.Error("history limits not set")
	}
	spec := &cj.Spec.JobTemplate.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever && spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		t.Errorf("restartPolicy %q", spec.RestartPolicy)
	}
	if spec.HostNetwork {
		t.Error("edgesync needs no host network")
	}
	c := container(t, spec, "edgesync")
	cmd := slices.Concat(c.Command, c.Args)
	if len(cmd) == 0 || path.Base(cmd[0]) != "edgesync" ||
		!slices.Equal(cmd[1:], []string{"run", "--once", "-c", "/etc/edgesync/edgesync.yaml"}) {
		t.Errorf("command %q, want edgesync run --once -c /etc/edgesync/edgesync.yaml", cmd)
	}

	psc, sc := spec.SecurityContext, c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	nonRoot := func(sc *corev1.SecurityContext, psc *corev1.PodSecurityContext) bool {
		if sc.RunAsNonRoot != nil {
			return *sc.RunAsNonRoot
		}
		return psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	}
	if !nonRoot(sc, psc) {
		t.Error("edgesync must run with runAsNonRoot")
	}
	if uid := sc.RunAsUser; uid == nil && (psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0) {
		t.Error("edgesync needs a non-zero runAsUser: the image's user is root")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop ALL and nothing added", sc.Capabilities)
	}

	// The config file and the secret files it names are all mounted.
	src, err := mountedFile(spec, c, configArg(t, cmd))
	if err != nil {
		t.Fatal(err)
	}
	body, err := b.read(src)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("edgesync.yaml: %v", err)
	}
	checkKeys(t, doc, "")
	cf, _ := doc["cloudflare"].(map[string]any)
	for _, f := range []struct {
		key  string
		file any
	}{
		{"api_key_file", doc["api_key_file"]},
		{"cloudflare.api_token_file", cf["api_token_file"]},
	} {
		file, ok := f.file.(string)
		if !ok {
			t.Errorf("%s not set: secrets come from mounted files", f.key)
			continue
		}
		s, err := mountedFile(spec, c, file)
		if err == nil && s.kind != "Secret" {
			err = fmt.Errorf("comes from a %s, want a Secret", s.kind)
		}
		if err == nil {
			_, err = b.read(s)
		}
		if err != nil {
			t.Errorf("%s: %v", f.key, err)
		}
	}
	if origins, _ := doc["origins"].([]any); slices.Contains(origins, any("CAPI")) || len(origins) == 0 {
		t.Errorf("origins %v: the community blocklist (CAPI) does not fit a Cloudflare list", origins)
	}
}

func checkKeys(t *testing.T, m map[string]any, prefix string) {
	t.Helper()
	allowed := edgesyncKeys[prefix]
	for k, v := range m {
		key := strings.TrimPrefix(prefix+"."+k, ".")
		if !slices.Contains(allowed, k) {
			t.Errorf("edgesync.yaml: unknown key %s", key)
			continue
		}
		switch v := v.(type) {
		case map[string]any:
			checkKeys(t, v, key)
		case []any:
			if _, ok := edgesyncKeys[key]; ok {
				for _, item := range v {
					if im, ok := item.(map[string]any); ok {
						checkKeys(t, im, key)
					}
				}
			}
		}
	}
}

// unitFile parses a systemd unit into section -> key -> values.
func unitFile(t *testing.T, name string) map[string]map[string][]string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	section := ""
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", name, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

func TestSystemd(t *testing.T) {
	u := unitFile(t, "systemd/xdpgate.service")
	svc := u["Service"]
	one := func(k string) string {
		if len(svc[k]) != 1 {
			t.Errorf("%s set %d times", k, len(svc[k]))
			return ""
		}
		return svc[k][0]
	}
	exec := strings.Fields(one("ExecStart"))
	if len(exec) < 2 || exec[0] != "/usr/local/bin/xdpgate" || exec[1] != "run" {
		t.Errorf("ExecStart %q", exec)
	}
	if cfg := configArg(t, exec); cfg != "/etc/xdpgate/xdpgate.yaml" {
		t.Errorf("ExecStart config %s", cfg)
	}
	for k, want := range map[string]string{"Restart": "on-failure", "KillSignal": "SIGTERM"} {
		if got := one(k); got != want {
			t.Errorf("%s=%s, want %s", k, got, want)
		}
	}
	if typ := one("Type"); typ != "simple" && typ != "notify" {
		t.Errorf("Type=%s", typ)
	}
	after := strings.Fields(strings.Join(u["Unit"]["After"], " "))
	for _, want := range []string{"network-online.target", "crowdsec.service"} {
		if !slices.Contains(after, want) {
			t.Errorf("After= lacks %s", want)
		}
	}
	if slices.Contains(strings.Fields(strings.Join(u["Unit"]["Requires"], " ")), "crowdsec.service") {
		t.Error("xdpgate must not stop with crowdsec: it keeps enforcing while the LAPI is down")
	}
	caps := strings.Fields(one("CapabilityBoundingSet"))
	sort.Strings(caps)
	if want := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_RESOURCE"}; !slices.Equal(caps, want) {
		t.Errorf("CapabilityBoundingSet %q, want %q", caps, want)
	}
	// Hardening must leave the bpffs writable and netlink usable.
	if ps := svc["ProtectSystem"]; len(ps) > 0 && ps[0] == "strict" &&
		!slices.Contains(strings.Fields(strings.Join(svc["ReadWritePaths"], " ")), bpffs) {
		t.Errorf("ProtectSystem=strict without ReadWritePaths=%s", bpffs)
	}
	if v := svc["ProtectKernelTunables"]; len(v) > 0 && v[0] == "yes" && len(svc["ReadWritePaths"]) == 0 {
		t.Error("ProtectKernelTunables=yes makes /sys/fs/bpf read-only")
	}
	for _, k := range []string{"PrivateNetwork", "PrivateUsers"} {
		if v := svc[k]; len(v) > 0 && v[0] == "yes" {
			t.Errorf("%s=yes cuts the agent off the host's network or capabilities", k)
		}
	}
	if fams := strings.Join(svc["RestrictAddressFamilies"], " "); fams != "" && !strings.Contains(fams, "AF_NETLINK") {
		t.Error("RestrictAddressFamilies must allow AF_NETLINK (XDP attach, nftables, routes)")
	}
	if f := strings.Join(svc["SystemCallFilter"], " "); f != "" && !slices.Contains(strings.Fields(f), "bpf") {
		t.Error("SystemCallFilter must allow bpf")
	}
}

func TestSystemdDefaultConfigLoads(t *testing.T) {
	body, err := os.ReadFile("systemd/xdpgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		APIKeyFile string `yaml:"api_key_file"`
	}
	if err := yaml.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.APIKeyFile != "/etc/xdpgate/api-key" {
		t.Errorf("api_key_file %q, want /etc/xdpgate/api-key as the unit's comments say", raw.APIKeyFile)
	}
	// Load a copy, with an overlay pointing the key file at a test key.
	dir := t.TempDir()
	p := filepath.Join(dir, "xdpgate.yaml")
	key := filepath.Join(dir, "api-key")
	for name, data := range map[string]string{p: string(body), p + ".local": "api_key_file: " + key + "\n", key: "k\n"} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("systemd/xdpgate.yaml does not load: %v", err)
	}
	if cfg.PinPath != "/sys/fs/bpf/xdpgate" || !cfg.Prometheus.Enabled {
		t.Errorf("unexpected defaults: %+v", cfg)
	}
}
