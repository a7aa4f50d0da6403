//! The Gateway API conformance driver against the API stand-in (TLS, as a kube-apiserver): each
//! core test's objects applied to it, Portico's Kubernetes source watching them, the Lease holder
//! writing their status, which the driver reads back from the stand-in as the upstream suite reads
//! it from the API server. The driver itself is tests/gateway/driver.rs (shared with the files-mode
//! binary, `gateway_conformance`). What the stand-in does not model: admission (CRD validation and
//! defaulting; Portico's types default what the CRDs would), and the kube-controller-manager (the
//! driver plays the endpoints controller and the kubelet, as in files mode).

mod common;
mod support;

const CLUSTER: bool = true;

include!("gateway/driver.rs");
