// Runs Argo CD resource health checks (health.lua) the way Argo CD does, in gopher-lua, the Lua
// VM Argo CD embeds, so the chart's check is tested without an Argo CD installation.
//
//	argocd-health test <dir>           runs <dir>/health_test.yaml (Argo CD's table format)
//	argocd-health eval <health.lua> <object.yaml|->
//	                                   prints {"status": …, "message": …} for one object
//
// As in Argo CD: the object is the global `obj` (maps and lists become tables, numbers
// numbers), only the base, table, string and math libraries are open, the script returns a
// table with `status` (Healthy, Progressing, Degraded, Suspended, Missing or Unknown) and
// `message`.
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

// A check that loops is stopped, as Argo CD bounds a script's run.
var scriptTimeout = 5 * time.Second

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	switch {
	case len(args) == 2 && args[0] == "test":
		return runTable(args[1], out)
	case len(args) == 3 && args[0] == "eval":
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		object, err := readObject(args[2])
		if err != nil {
			return err
		}
		status, err := evaluate(string(script), object)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(status)
	default:
		return errors.New("usage: argocd-health test <dir> | eval <health.lua> <object.yaml|->")
	}
}

// runTable checks every case of <dir>/health_test.yaml against <dir>/health.lua and prints one
// line per case; it fails when any case differs.
func runTable(dir string, out io.Writer) error {
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
		got, err := evaluate(string(script), object)
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
func evaluate(script string, object map[string]any) (HealthStatus, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
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
		return HealthStatus{}, errors.New("the check returned no table")
	}
	status := HealthStatus{
		Status:  lua.LVAsString(returned.RawGetString("status")),
		Message: lua.LVAsString(returned.RawGetString("message")),
	}
	if !statuses[status.Status] {
		return HealthStatus{}, fmt.Errorf("the check returned the unknown status %q", status.Status)
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
		for i, item := range v {
			table.RawSetInt(i+1, toLua(state, item))
		}
		return table
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
