package handlers

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"
)

// epoch is every file's time and every image's creation time, so that a
// rebuild of the same thing gives the same image ID.
var epoch = time.Unix(0, 0).UTC()

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// layer is one uncompressed layer tar and its digest (its diff_id).
type layer struct {
	data    []byte
	diffID  string // sha256:<hex>
	comment string // for the image's history
}

func (l *layer) hex() string { return l.diffID[len("sha256:"):] }

// entry is one file, folder or symlink in a layer.
type entry struct {
	path   string // without a leading slash
	mode   int64  // permission bits (and sticky)
	typ    byte   // tar.TypeReg, tar.TypeDir, tar.TypeSymlink
	data   []byte
	target string // for a symlink
}

// newLayer writes the entries (in the given order: folders before what they
// hold) as a layer tar owned by root with epoch times.
func newLayer(comment string, entries []entry) (*layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     e.path,
			Mode:     e.mode,
			ModTime:  epoch,
			Uid:      0,
			Gid:      0,
			Uname:    "root",
			Gname:    "root",
			Format:   tar.FormatUSTAR,
		}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(e.data))
		case tar.TypeSymlink:
			h.Linkname = e.target
		}
		if len(h.Name) > 100 { // USTAR's limit for a simple name
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer %s: %w", e.path, err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(buf.Bytes())
	return &layer{data: buf.Bytes(), diffID: "sha256:" + hex.EncodeToString(sum[:]), comment: comment}, nil
}

// imageSpec is one image to write: its layers (bottom first) and config.
type imageSpec struct {
	name       string
	ref        string
	platform   Platform
	layers     []*layer
	entrypoint []string
	cmd        []string
	env        []string
	labels     map[string]string

	config []byte // filled by finish
	id     string // sha256:<hex> of config
}

func (im *imageSpec) size() int64 {
	var n int64
	for _, l := range im.layers {
		n += int64(len(l.data))
	}
	return n
}

func (im *imageSpec) built() Built {
	return Built{Name: im.name, Ref: im.ref, ID: im.id, Size: im.size(), Platform: im.platform}
}

// The image config, as Docker and OCI write it.
type imageConfig struct {
	Architecture string          `json:"architecture"`
	Variant      string          `json:"variant,omitempty"`
	OS           string          `json:"os"`
	Created      time.Time       `json:"created"`
	Author       string          `json:"author,omitempty"`
	Config       containerConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []history `json:"history"`
}

type containerConfig struct {
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type history struct {
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
	Comment   string    `json:"comment,omitempty"`
}

// finish writes the image's config and so fixes its ID.
func (im *imageSpec) finish() error {
	c := imageConfig{
		Architecture: im.platform.Arch,
		Variant:      im.platform.Variant,
		OS:           im.platform.OS,
		Created:      epoch,
		Author:       "onebox handlers",
		Config: containerConfig{
			Env:        im.env,
			Entrypoint: im.entrypoint,
			Cmd:        im.cmd,
			WorkingDir: "/",
			Labels:     im.labels,
		},
	}
	c.RootFS.Type = "layers"
	for _, l := range im.layers {
		c.RootFS.DiffIDs = append(c.RootFS.DiffIDs, l.diffID)
		c.History = append(c.History, history{Created: epoch, CreatedBy: l.comment, Comment: "onebox handlers"})
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	im.config, im.id = b, "sha256:"+hex.EncodeToString(sum[:])
	return nil
}

// writeArchive writes the images as one docker-archive tar: manifest.json,
// then <config hex>.json for each image, then <diff_id hex>/layer.tar for
// each distinct layer (the layout `docker save` wrote before OCI layouts;
// docker load and podman load both read it).
func writeArchive(w io.Writer, imgs []*imageSpec) error {
	type manifestEntry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	manifest := make([]manifestEntry, 0, len(imgs))
	var layers []*layer
	for _, im := range imgs {
		if im.config == nil {
			if err := im.finish(); err != nil {
				return err
			}
		}
		e := manifestEntry{Config: im.id[len("sha256:"):] + ".json", RepoTags: []string{im.ref}}
		for _, l := range im.layers {
			e.Layers = append(e.Layers, l.hex()+"/layer.tar")
			if !slices.ContainsFunc(layers, func(x *layer) bool { return x.diffID == l.diffID }) {
				layers = append(layers, l)
			}
		}
		manifest = append(manifest, e)
	}
	mb, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := file("manifest.json", mb); err != nil {
		return err
	}
	written := map[string]bool{}
	for _, im := range imgs {
		name := im.id[len("sha256:"):] + ".json"
		if written[name] {
			continue
		}
		written[name] = true
		if err := file(name, im.config); err != nil {
			return err
		}
	}
	for _, l := range layers {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: l.hex() + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		if err := file(l.hex()+"/VERSION", []byte("1.0")); err != nil {
			return err
		}
		if err := file(l.hex()+"/layer.tar", l.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// assemble compiles and lays out the named images, in the order given
// (names repeated are built once; "shell" brings the busybox base along).
func assemble(ctx context.Context, names []string, o Options) ([]*imageSpec, error) {
	p, err := o.platform()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no handler named: choose among %v", Names())
	}
	var want []string
	var goNames []string
	needBusybox := false
	for _, n := range names {
		if slices.Contains(want, n) {
			continue
		}
		switch {
		case goHandlers[n]:
			goNames = append(goNames, n)
		case n == "shell" || n == BusyboxName:
			needBusybox = true
		default:
			return nil, fmt.Errorf("no handler %q: choose among %v (or %q, the base image)", n, Names(), BusyboxName)
		}
		want = append(want, n)
	}
	if slices.Contains(want, "shell") && !slices.Contains(want, BusyboxName) {
		want = append(want, BusyboxName)
	}
	log := o.logger()

	var bins map[string][]byte
	if len(goNames) > 0 {
		o.progress("compiling %v for %s…", goNames, p)
		if bins, err = compile(ctx, goNames, p, o); err != nil {
			return nil, err
		}
	}
	var bbLayer *layer
	if needBusybox {
		if bbLayer, err = busyboxLayer(ctx, p, o); err != nil {
			return nil, err
		}
	}

	imgs := make([]*imageSpec, 0, len(want))
	for _, n := range want {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		im := &imageSpec{
			name:     n,
			ref:      o.Ref(n),
			platform: p,
			env:      []string{defaultPath},
			labels:   map[string]string{LabelHandler: n},
		}
		switch {
		case goHandlers[n]:
			l, err := newLayer("COPY "+n+" /handler # go build -trimpath -ldflags='-s -w', CGO_ENABLED=0", []entry{
				{path: "handler", mode: 0o755, typ: tar.TypeReg, data: bins[n]},
			})
			if err != nil {
				return nil, err
			}
			im.layers = []*layer{l}
			im.entrypoint = []string{"/handler"}
		case n == "shell":
			script, err := sources.ReadFile("shell/handler.sh")
			if err != nil {
				return nil, err
			}
			l, err := newLayer("COPY handler.sh /handler.sh", []entry{
				{path: "handler.sh", mode: 0o755, typ: tar.TypeReg, data: script},
			})
			if err != nil {
				return nil, err
			}
			im.layers = []*layer{bbLayer, l}
			im.entrypoint = []string{"/bin/sh", "/handler.sh"}
		case n == BusyboxName:
			im.layers = []*layer{bbLayer}
			im.cmd = []string{"sh"}
			im.labels = map[string]string{"io.onebox.base": "busybox"}
		}
		if err := im.finish(); err != nil {
			return nil, err
		}
		log.Debug("handler image", "ref", im.ref, "id", im.id, "platform", p.String(), "bytes", im.size())
		o.progress("built %s (%s) %s", im.ref, p, HumanBytes(im.size()))
		imgs = append(imgs, im)
	}
	return imgs, nil
}
