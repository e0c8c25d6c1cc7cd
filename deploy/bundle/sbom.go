package bundle

import (
	"bytes"
	"fmt"
	"runtime/debug"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// cyclonedxModule is the library that writes the SBOM; its version, read
// from the running program's build information, is named in the SBOM.
const cyclonedxModule = "github.com/CycloneDX/cyclonedx-go"

// SBOMOptions describes the binary whose build information is turned into
// an SBOM.
type SBOMOptions struct {
	Name      string    // component name, e.g. "unigate"
	Version   string    // the stamped version; empty: the main module's version
	Timestamp time.Time // zero: no timestamp (reproducible output)
}

// SBOM builds a CycloneDX bill of materials from a Go binary's build
// information (runtime/debug.ReadBuildInfo for the running program,
// debug/buildinfo.ReadFile for a file of any architecture): the binary is
// the metadata component, every linked module a library component with
// its go.sum hash, and the Go toolchain and build settings are
// properties. The output depends only on bi and o.
func SBOM(bi *debug.BuildInfo, o SBOMOptions) *cdx.BOM {
	version := o.Version
	if version == "" {
		version = bi.Main.Version
	}
	mainRef := purl(bi.Main.Path, version)
	props := []cdx.Property{{Name: "go:toolchain", Value: bi.GoVersion}, {Name: "go:package", Value: bi.Path}}
	for _, s := range bi.Settings {
		props = append(props, cdx.Property{Name: "go:build:" + s.Key, Value: s.Value})
	}
	app := cdx.Component{
		BOMRef:     mainRef,
		Type:       cdx.ComponentTypeApplication,
		Name:       o.Name,
		Version:    version,
		PackageURL: mainRef,
		Properties: &props,
	}
	bom := cdx.NewBOM()
	bom.Metadata = &cdx.Metadata{Component: &app}
	if !o.Timestamp.IsZero() {
		bom.Metadata.Timestamp = o.Timestamp.UTC().Format(time.RFC3339)
	}
	if tool := toolComponent(); tool != nil {
		bom.Metadata.Tools = &cdx.ToolsChoice{Components: &[]cdx.Component{*tool}}
	}
	comps := make([]cdx.Component, 0, len(bi.Deps))
	refs := make([]string, 0, len(bi.Deps))
	for _, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		ref := purl(m.Path, m.Version)
		c := cdx.Component{
			BOMRef:     ref,
			Type:       cdx.ComponentTypeLibrary,
			Name:       m.Path,
			Version:    m.Version,
			PackageURL: ref,
			Scope:      cdx.ScopeRequired,
		}
		var mp []cdx.Property
		if m.Sum != "" {
			// The go.sum hash (dirhash h1): the module proxy and the
			// checksum database identify the module's content by it.
			mp = append(mp, cdx.Property{Name: "go:module:sum", Value: m.Sum})
		}
		if d.Replace != nil {
			mp = append(mp, cdx.Property{Name: "go:module:replaces", Value: d.Path + "@" + d.Version})
		}
		if mp != nil {
			c.Properties = &mp
		}
		comps = append(comps, c)
		refs = append(refs, ref)
	}
	bom.Components = &comps
	bom.Dependencies = &[]cdx.Dependency{{Ref: mainRef, Dependencies: &refs}}
	return bom
}

// EncodeSBOM returns bom as indented CycloneDX JSON.
func EncodeSBOM(bom *cdx.BOM) ([]byte, error) {
	var b bytes.Buffer
	enc := cdx.NewBOMEncoder(&b, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.Encode(bom); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// purl is the package URL of a Go module (purl-spec, type golang).
func purl(modPath, version string) string {
	p := "pkg:golang/" + modPath
	if version != "" && version != "(devel)" {
		p += "@" + version
	}
	return p
}

// toolComponent names cyclonedx-go, as linked into the running program.
func toolComponent() *cdx.Component {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	for _, d := range bi.Deps {
		if d.Path == cyclonedxModule {
			return &cdx.Component{Type: cdx.ComponentTypeLibrary, Name: d.Path, Version: d.Version,
				PackageURL: purl(d.Path, d.Version)}
		}
	}
	return nil
}

// Summary is a one-line description of bom for logs.
func Summary(bom *cdx.BOM) string {
	n := 0
	if bom.Components != nil {
		n = len(*bom.Components)
	}
	return fmt.Sprintf("%s %s: %d modules", bom.Metadata.Component.Name, bom.Metadata.Component.Version, n)
}
