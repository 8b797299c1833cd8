// Command imagetool writes a container image FROM scratch — one static binary, an entrypoint, a
// non-root user, exposed ports and OCI labels — as a docker-archive tarball, without a daemon or
// a registry. `docker load`, `kind load image-archive`, `minikube image load` and
// `ctr images import` all read that format.
//
//	imagetool -binary target/.../msa-user -name ghcr.io/msa-dev/msa-user:0.1.0 \
//	  -port 8080 -label org.opencontainers.image.version=0.1.0 -out msa-user.tar
//
// The image format (manifest, config, layer digests, the tarball's layout) is go-containerregistry's;
// this file only says what goes into the image. The layer is written with Go's archive/tar with
// fixed timestamps and owners, so the same binary always gives the same layer digest.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	binary := flag.String("binary", "", "static executable to put at /<its name> and run as the entrypoint")
	imageName := flag.String("name", "", "image reference written into the tarball, e.g. ghcr.io/msa-dev/msa-user:0.1.0")
	out := flag.String("out", "", "tarball to write")
	user := flag.String("user", "65532:65532", "UID:GID the container runs as")
	var ports, labels, args listFlag
	flag.Var(&ports, "port", "TCP port to declare as exposed (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE image label (repeatable)")
	flag.Var(&args, "arg", "default argument after the entrypoint (repeatable)")
	flag.Parse()
	if *binary == "" || *imageName == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*binary, *imageName, *out, *user, ports, labels, args); err != nil {
		fmt.Fprintf(os.Stderr, "imagetool: %v\n", err)
		os.Exit(1)
	}
}

func run(binary, imageName, out, user string, ports, labels, args []string) error {
	ref, err := name.ParseReference(imageName)
	if err != nil {
		return fmt.Errorf("image name %q: %w", imageName, err)
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	entrypoint := "/" + path.Base(binary)
	layerTar, err := singleFileTar(entrypoint, data)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = []string{entrypoint}
	cfg.Config.Cmd = args
	cfg.Config.User = user
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{"PATH=/"}
	cfg.Config.ExposedPorts = map[string]struct{}{}
	for _, p := range ports {
		cfg.Config.ExposedPorts[p+"/tcp"] = struct{}{}
	}
	cfg.Config.Labels = map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q is not KEY=VALUE", l)
		}
		cfg.Config.Labels[k] = v
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// singleFileTar is the image's only layer: the executable, owned by root and not writable by the
// user the container runs as.
func singleFileTar(file string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	if err := w.WriteHeader(&tar.Header{
		Name: strings.TrimPrefix(file, "/"), Mode: 0o755, Size: int64(len(data)),
		Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX,
	}); err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
