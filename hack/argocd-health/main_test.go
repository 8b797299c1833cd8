package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const check = `
hs = {}
if obj.status ~= nil and obj.status.observedGeneration >= obj.metadata.generation then
  hs.status = "Healthy"
  hs.message = obj.status.conditions[1].message
else
  hs.status = "Progressing"
end
return hs
`

func object(t *testing.T, text string) map[string]any {
	t.Helper()
	path := filepath.Join(t.TempDir(), "o.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := readObject(path)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestNumbersListsAndMapsReachLuaAsArgoCDGivesThem(t *testing.T) {
	got, err := evaluate(check, object(t, `
metadata: {generation: 3}
status:
  observedGeneration: 3
  conditions: [{type: Ready, message: all 4 components are ready}]
`), false)
	if err != nil {
		t.Fatal(err)
	}
	if got != (HealthStatus{"Healthy", "all 4 components are ready"}) {
		t.Fatalf("got %+v", got)
	}
	got, err = evaluate(check, object(t, "metadata: {generation: 4}\nstatus: {observedGeneration: 3}\n"), false)
	if err != nil || got.Status != "Progressing" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestAScriptThatReturnsNoVerdictIsAnError(t *testing.T) {
	scriptTimeout = 200 * time.Millisecond
	for script, want := range map[string]string{
		`return 1`: "expect table output from Lua script, not number",
		`return {status = "Healthy", message = 3}`:  "message is a number, not a string",
		`return obj.missing.field`:                  "attempt to index",
		`while true do end return {}`:               "context deadline exceeded",
		`os.exit(1) return {}`:                      "key 'exit'",  // the safe os Argo CD opens has no exit
		`return {status = io.read()}`:               "key 'read'",  // nor is io open
		`return {status = string.upper("healthy")}`: "key 'upper'", // nor string
	} {
		_, err := evaluate(script, map[string]any{"metadata": map[string]any{}}, false)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", script, err, want)
		}
	}
}

func TestAnUnknownStatusReadsAsArgoCDShowsIt(t *testing.T) {
	got, err := evaluate(`return {status = "Fine"}`, map[string]any{}, false)
	if err != nil || got != (HealthStatus{"Unknown", invalidHealthStatus}) {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestOpenLibsOpensTheStringLibrary(t *testing.T) {
	got, err := evaluate(`return {status = string.gsub("Healthy", "x", "")}`, map[string]any{}, true)
	if err != nil || got.Status != "Healthy" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestATableWithAWrongExpectationFails(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("health.lua", check)
	write("ready.yaml", "metadata: {generation: 1}\nstatus: {observedGeneration: 1, conditions: [{message: ok}]}\n")
	write("health_test.yaml", "tests:\n- healthStatus: {status: Healthy, message: ok}\n  inputPath: ready.yaml\n")
	var out strings.Builder
	if err := runTable(dir, false, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	write("health_test.yaml", "tests:\n- healthStatus: {status: Degraded, message: ok}\n  inputPath: ready.yaml\n")
	out.Reset()
	if err := runTable(dir, false, &out); err == nil || !strings.Contains(out.String(), "FAILED") {
		t.Fatalf("a wrong expectation passed: %v\n%s", err, out.String())
	}
	write("health_test.yaml", "tests:\n- healthStatus: {status: Healthy}\n  inputpath: ready.yaml\n")
	if err := runTable(dir, false, &out); err == nil {
		t.Fatal("a misspelt key was accepted")
	}
}
