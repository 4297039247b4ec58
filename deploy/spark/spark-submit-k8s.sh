#!/usr/bin/env bash
# Submits a Spark job to Kubernetes with Shoal as its shuffle storage and dynamic allocation
# scaling executors from zero. Adjust the variables; the Shoal values match the Helm chart's
# defaults for a release "shoal" in namespace "shuffle".
set -euo pipefail

K8S_API="${K8S_API:?set K8S_API, e.g. https://kubernetes.default.svc or the URL from kubectl cluster-info}"
SPARK_NAMESPACE="${SPARK_NAMESPACE:-spark}"
SPARK_IMAGE="${SPARK_IMAGE:?set SPARK_IMAGE: a Spark 4 image that holds the Shoal plugin jar}"
SPARK_SA="${SPARK_SA:-spark}"
SHOAL_NAMESPACE="${SHOAL_NAMESPACE:-shuffle}"
SHOAL_RELEASE="${SHOAL_RELEASE:-shoal}"
SHOAL_MASTERS="${SHOAL_MASTERS:-3}"
SHOAL_PORT="${SHOAL_PORT:-9100}"
SHOAL_JAR="${SHOAL_JAR:-local:///opt/shoal/shoal-spark.jar}"
# Secrets in SPARK_NAMESPACE: the cluster CA (key ca.crt), the tenant credential (key
# tenant.credential, mounted into the driver only) and the S3 keys for direct reads:
#   kubectl -n spark create secret generic shoal-credential \
#     --from-file=tenant.credential=auth/spark.credential
CA_SECRET="${CA_SECRET:-shoal-ca}"
CREDENTIAL_SECRET="${CREDENTIAL_SECRET:-shoal-credential}"
S3_SECRET="${S3_SECRET:-shoal-s3}"
AWS_REGION="${AWS_REGION:-us-east-1}"
# GroupByTest shuffles mappers x pairs x value bytes (here 200 x 100000 x 1000 B, about 20 GB).
SPARK_EXAMPLES_JAR="${SPARK_EXAMPLES_JAR:?set SPARK_EXAMPLES_JAR, e.g. local:///opt/spark/examples/jars/spark-examples_2.13-4.0.0.jar}"

# Every master's pod DNS name: any of them answers, calls follow the Raft leader.
endpoints=""
for ((i = 0; i < SHOAL_MASTERS; i++)); do
  host="$SHOAL_RELEASE-master-$i.$SHOAL_RELEASE-master-headless.$SHOAL_NAMESPACE.svc.cluster.local:$SHOAL_PORT"
  endpoints="${endpoints:+$endpoints,}$host"
done

exec spark-submit \
  --master "k8s://$K8S_API" \
  --deploy-mode cluster \
  --name shoal-example \
  --conf spark.kubernetes.namespace="$SPARK_NAMESPACE" \
  --conf spark.kubernetes.container.image="$SPARK_IMAGE" \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName="$SPARK_SA" \
  --conf spark.jars="$SHOAL_JAR" \
  --conf spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager \
  --conf spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO \
  --conf spark.shoal.master.endpoints="$endpoints" \
  --conf spark.shoal.tls.ca=/etc/shoal/ca/ca.crt \
  --conf spark.shoal.auth.credentialFile=/etc/shoal/credential/tenant.credential \
  --conf spark.kubernetes.driver.secrets."$CA_SECRET"=/etc/shoal/ca \
  --conf spark.kubernetes.driver.secrets."$CREDENTIAL_SECRET"=/etc/shoal/credential \
  --conf spark.kubernetes.executor.secrets."$CA_SECRET"=/etc/shoal/ca \
  --conf spark.kubernetes.executor.secretKeyRef.AWS_ACCESS_KEY_ID="$S3_SECRET:AWS_ACCESS_KEY_ID" \
  --conf spark.kubernetes.executor.secretKeyRef.AWS_SECRET_ACCESS_KEY="$S3_SECRET:AWS_SECRET_ACCESS_KEY" \
  --conf spark.executorEnv.AWS_REGION="$AWS_REGION" \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.shuffleTracking.enabled=false \
  --conf spark.shuffle.service.enabled=false \
  --conf spark.dynamicAllocation.minExecutors=0 \
  --conf spark.dynamicAllocation.maxExecutors=50 \
  --conf spark.dynamicAllocation.executorIdleTimeout=60s \
  --class org.apache.spark.examples.GroupByTest \
  "$SPARK_EXAMPLES_JAR" 200 100000 1000 400
