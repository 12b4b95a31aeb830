"""The local stack's Kubernetes API: ``services`` starts kine, kube-apiserver and kube-controller-manager;
``build`` finds the binaries ``scripts/build-kube.sh`` compiled for the pinned versions; ``pki`` issues the
certificates and kubeconfigs of its users from the stack CA; ``crds`` installs the CustomResourceDefinitions the
platform uses."""
