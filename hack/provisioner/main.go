// Command msa-provisioner gives the test cluster dynamic storage the way kind's and minikube's
// default StorageClass do: each claim gets a folder on the machine's disk as a hostPath
// PersistentVolume, removed when the volume is deleted. Every node of the test cluster (the real
// one in its network namespace and the kwok ones) shares this machine's filesystem, so the
// volumes carry no node affinity; a cluster of several machines would need one. It runs on the host beside the control plane (the node shares the host's
// filesystem) and is built on the Kubernetes SIG Storage provisioner library, which does the
// watching, binding bookkeeping and retries.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

type hostPathProvisioner struct {
	root string
}

// Provision creates the claim's folder, open to the pod's non-root user (hostPath volumes get
// no fsGroup ownership change), and describes it as a PersistentVolume.
func (p *hostPathProvisioner) Provision(_ context.Context, options controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	claim := options.PVC
	dir := filepath.Join(p.root, fmt.Sprintf("%s_%s_%s", claim.Namespace, claim.Name, options.PVName))
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("open %s to the pod's user: %w", dir, err)
	}
	directory := v1.HostPathDirectory
	volume := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: options.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: *options.StorageClass.ReclaimPolicy,
			AccessModes:                   claim.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: claim.Spec.Resources.Requests[v1.ResourceStorage]},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &directory},
			},
		},
	}
	klog.InfoS("provisioned", "claim", claim.Namespace+"/"+claim.Name, "volume", options.PVName, "path", dir, "node", options.SelectedNodeName)
	return volume, controller.ProvisioningFinished, nil
}

// Delete removes the folder of a volume whose claim is gone (reclaim policy Delete), and only
// folders under the root it provisions into.
func (p *hostPathProvisioner) Delete(_ context.Context, volume *v1.PersistentVolume) error {
	if volume.Spec.HostPath == nil {
		return errors.New("not a hostPath volume")
	}
	dir := filepath.Clean(volume.Spec.HostPath.Path)
	if !strings.HasPrefix(dir, p.root+string(filepath.Separator)) {
		return fmt.Errorf("refusing to delete %s: outside %s", dir, p.root)
	}
	klog.InfoS("deleting", "volume", volume.Name, "path", dir)
	return os.RemoveAll(dir)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	root := flag.String("root", "", "folder the volumes' folders are created in")
	name := flag.String("name", "msa.dev/hostpath", "provisioner name StorageClasses refer to")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "usage: msa-provisioner --kubeconfig FILE --root DIR")
		os.Exit(2)
	}
	absRoot, err := filepath.Abs(*root)
	if err == nil {
		err = os.MkdirAll(absRoot, 0o755)
	}
	if err != nil {
		klog.Fatalf("root folder: %v", err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Fatalf("client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, *name, &hostPathProvisioner{root: absRoot},
		controller.LeaderElection(false))
	klog.InfoS("provisioning", "name", *name, "root", absRoot)
	pc.Run(ctx)
}
