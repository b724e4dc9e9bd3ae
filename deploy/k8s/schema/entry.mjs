// The schema validators bundled into k8s_validators.cjs (build_bundle.sh): one per kind that
// deploy/k8s/ uses, keyed "apiVersion/kind". Each is kubernetes-models' validate function, compiled
// by the package from the Kubernetes OpenAPI schema (ajv standalone code); it returns true or false
// and leaves its errors on `.errors`.
import { validate as configMap } from "kubernetes-models/_schemas/IoK8sApiCoreV1ConfigMap";
import { validate as namespace } from "kubernetes-models/_schemas/IoK8sApiCoreV1Namespace";
import { validate as service } from "kubernetes-models/_schemas/IoK8sApiCoreV1Service";
import { validate as deployment } from "kubernetes-models/_schemas/IoK8sApiAppsV1Deployment";
import { validate as statefulSet } from "kubernetes-models/_schemas/IoK8sApiAppsV1StatefulSet";
import { validate as pdb } from "kubernetes-models/_schemas/IoK8sApiPolicyV1PodDisruptionBudget";
// This package's export map has no "_schemas/*" entry: import the file.
import { validate as serviceMonitor } from "./node_modules/@kubernetes-models/prometheus-operator/_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js";

export const validators = {
  "v1/ConfigMap": configMap,
  "v1/Namespace": namespace,
  "v1/Service": service,
  "apps/v1/Deployment": deployment,
  "apps/v1/StatefulSet": statefulSet,
  "policy/v1/PodDisruptionBudget": pdb,
  "monitoring.coreos.com/v1/ServiceMonitor": serviceMonitor,
};
