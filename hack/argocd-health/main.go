// Runs Argo CD resource health checks (health.lua) the way Argo CD does, in gopher-lua, the Lua
// VM Argo CD embeds, so the chart's check is tested without an Argo CD installation.
//
//	argocd-health test <dir>           runs <dir>/health_test.yaml (Argo CD's table format)
//	argocd-health eval <health.lua> <object.yaml|->
//	                                   prints {"status": …, "message": …} for one object
//
// As Argo CD runs a check given in argocd-cm (util/lua/lua.go, runLua): the object is the
// global `obj` (maps and lists become tables, numbers numbers, other values nil), only the
// package, base and table libraries are open (Argo CD adds a "safe" os with time and date, which
// this runner leaves out: a check using it fails here), the run is cut after 1 s, and the script
// returns a table whose `status` and `message` must be strings; a status that is not Healthy,
// Progressing, Degraded, Suspended, Missing or Unknown reads as Unknown with Argo CD's message.
// -open-libs opens every library, as Argo CD does with
// resource.customizations.useOpenLibs.<group_kind>.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// HealthStatus is what a check returns, as Argo CD's health.HealthStatus.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

type testCase struct {
	HealthStatus HealthStatus `json:"healthStatus"`
	InputPath    string       `json:"inputPath"`
}

type testTable struct {
	Tests []testCase `json:"tests"`
}

var statuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// A check that loops is stopped after Argo CD's bound on a script's run.
var scriptTimeout = 1 * time.Second

// Argo CD's answer to a status it does not know.
const invalidHealthStatus = "Lua returned an invalid health status"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	openLibs := false
	if len(args) > 0 && args[0] == "-open-libs" {
		openLibs, args = true, args[1:]
	}
	switch {
	case len(args) == 2 && args[0] == "test":
		return runTable(args[1], openLibs, out)
	case len(args) == 3 && args[0] == "eval":
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		object, err := readObject(args[2])
		if err != nil {
			return err
		}
		status, err := evaluate(string(script), object, openLibs)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(status)
	default:
		return errors.New("usage: argocd-health [-open-libs] test <dir> | eval <health.lua> <object.yaml|->")
	}
}

// runTable checks every case of <dir>/health_test.yaml against <dir>/health.lua and prints one
// line per case; it fails when any case differs.
func runTable(dir string, openLibs bool, out io.Writer) error {
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		return err
	}
	var table testTable
	if err := yaml.UnmarshalStrict(raw, &table); err != nil {
		return fmt.Errorf("health_test.yaml: %w", err)
	}
	if len(table.Tests) == 0 {
		return errors.New("health_test.yaml has no tests")
	}
	failed := 0
	for _, c := range table.Tests {
		object, err := readObject(filepath.Join(dir, c.InputPath))
		if err != nil {
			return err
		}
		got, err := evaluate(string(script), object, openLibs)
		if err != nil {
			return fmt.Errorf("%s: %w", c.InputPath, err)
		}
		verdict := "ok"
		if got != c.HealthStatus {
			verdict = "FAILED"
			failed++
		}
		fmt.Fprintf(out, "%-6s %-40s %-11s %s\n", verdict, c.InputPath, got.Status, got.Message)
		if got != c.HealthStatus {
			fmt.Fprintf(out, "       expected %-11s %s\n", c.HealthStatus.Status, c.HealthStatus.Message)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cases differ", failed, len(table.Tests))
	}
	fmt.Fprintf(out, "%d cases as expected\n", len(table.Tests))
	return nil
}

func readObject(path string) (map[string]any, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var object map[string]any
	if err := yaml.Unmarshal(raw, &object); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if object == nil {
		return nil, fmt.Errorf("%s: no object", path)
	}
	return object, nil
}

// evaluate runs the check on one object.
func evaluate(script string, object map[string]any, openLibs bool) (HealthStatus, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer state.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		state.Push(state.NewFunction(lib.open))
		state.Push(lua.LString(lib.name))
		state.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(script); err != nil {
		return HealthStatus{}, err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return HealthStatus{}, fmt.Errorf("expect table output from Lua script, not %s", state.Get(-1).Type())
	}
	var status HealthStatus
	for field, into := range map[string]*string{"status": &status.Status, "message": &status.Message} {
		switch value := returned.RawGetString(field).(type) {
		case lua.LString:
			*into = string(value)
		case *lua.LNilType:
		default:
			return HealthStatus{}, fmt.Errorf("the check's %s is a %s, not a string", field, value.Type())
		}
	}
	if !statuses[status.Status] {
		return HealthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return status, nil
}

// toLua converts a decoded object as Argo CD's decodeValue does.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case map[string]any:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []any:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	default:
		return lua.LNil
	}
}
