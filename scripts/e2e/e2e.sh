#!/usr/bin/env bash
# `make e2e`: the project on a real cluster. Creates a kind cluster, installs MinIO and the
# stack's prerequisites, trains and publishes two iris versions, `pulumi up --stack kind`,
# predicts through the Gateway, bumps the version under a bounded request loop (zero failed
# requests, the new version serving), rolls back, mirrors the calls to a shadow version (its pods
# serve them, clients see only the stable version), then (stack kind-pools) serves iris and taxi-fare
# from one serving pool and bumps iris under load (zero failed requests of either), then (stack
# kind-flagger: Prometheus and Flagger) publishes a version that loads but fails its predictions
# and requires Flagger to roll it back, and finally releases a change that breaks gRPC only, which the load tester's
# `grpc-predict` webhook must make Flagger roll back. Everything is torn down at the end, also on failure; logs go to build/e2e/.
#
# Every step is a function; `main` runs them in order. Sourcing this file defines them without
# running anything (tests/test_e2e.py calls them with stubbed commands on PATH). Each command of a
# step ends in `|| return 1`: bash ignores `set -e` inside a function called from `||` or `if`.
#
# Needs: docker (running), kind, kubectl, pulumi, curl, openssl, git, timeout, and `make install`'s
# .venv. Traffic stays on loopback and in the cluster: port-forwards bind 127.0.0.1 only.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$E2E_DIR/../.." && pwd)"
CLUSTER="${E2E_CLUSTER:-model-serving-e2e}"
CONTEXT="kind-$CLUSTER" # stacks/Pulumi.kind*.yaml name this context
LOG_DIR="${E2E_LOG_DIR:-$ROOT/build/e2e}"
PYTHON="${E2E_PYTHON:-$ROOT/.venv/bin/python}"
MODEL=iris
ENVIRONMENT=kind # the manifests' environment both kind stacks serve
STACK=kind
FLAGGER_STACK=kind-flagger
POOLS_STACK=kind-pools
POOLS_ENVIRONMENT=kind-pools # the manifests' environment the pool stack serves
POOLS_NAMESPACE=models-pools
POOL_SHARD=shared-0 # the one shard of pool `shared` in stacks/Pulumi.kind-pools.yaml
PEER=taxi-fare      # iris's co-tenant in that pool
HOST=models.kind.localtest.me # routing.host of both stacks
GATEWAY_PORT="${E2E_GATEWAY_PORT:-18443}"
SHADOW_PORT="${E2E_SHADOW_PORT:-18501}" # a port-forward to the shadow Service's REST port
STORE_PORT=19000 # objectStore.externalEndpoint of both stacks: http://127.0.0.1:19000
REQUIRED_TOOLS=(docker kind kubectl pulumi curl openssl git timeout)
# What the throwaway copy needs: the program, its inputs, the CLI and the policy pack.
PROJECT_FILES=(infra scripts models stacks policy Pulumi.yaml __main__.py requirements.txt)

# Bounds, in seconds unless named otherwise: every wait ends.
CLUSTER_SECONDS="${E2E_CLUSTER_SECONDS:-600}"
WAIT_SECONDS="${E2E_WAIT_SECONDS:-300}"
UP_SECONDS="${E2E_UP_SECONDS:-1500}"
STEP_SECONDS="${E2E_STEP_SECONDS:-600}" # one training, one publish
REQUEST_SECONDS="${E2E_REQUEST_SECONDS:-10}"
LOOP_MAX_REQUESTS="${E2E_LOOP_MAX_REQUESTS:-4000}"
LOOP_MAX_SECONDS="${E2E_LOOP_MAX_SECONDS:-1200}"
LOOP_PAUSE="${E2E_LOOP_PAUSE:-0.2}"
FLAGGER_SECONDS="${E2E_FLAGGER_SECONDS:-900}"

WORK=""            # the run's temporary directory (make_workdir)
PROJECT=""         # the throwaway copy of the project in it (prepare_project)
CLUSTER_CREATED="" # set once this run owns a cluster named $CLUSTER
BACKGROUND_PIDS=() # port-forwards and request loops, stopped by teardown
FORWARD_PID=""     # the last port-forward started (port_forward)
GATEWAY_FORWARD="" # the port-forward to the Gateway's Envoy Service (forward_gateway)
LOOP_PID=""        # the background request loop (start_request_loop)
FIRST=""           # the two versions published (train_and_publish)
SECOND=""
PEER_VERSION="" # the co-tenant's version published (train_and_publish_peer)

log() {
    local line
    line="$(date -u +%H:%M:%S) e2e: $*"
    printf '%s\n' "$line" >&2
    if [[ -d "$LOG_DIR" ]]; then printf '%s\n' "$line" >>"$LOG_DIR/e2e.log"; fi
}

die() {
    log "FAILED: $*"
    exit 1
}

# run LOGNAME COMMAND...: runs it with its output appended to $LOG_DIR/LOGNAME.log; a failure
# names the command and the log.
run() {
    local logname=$1 status=0
    shift
    log "\$ $*"
    "$@" >>"$LOG_DIR/$logname.log" 2>&1 || status=$?
    if ((status != 0)); then log "exit $status: $* (see $LOG_DIR/$logname.log)"; fi
    return "$status"
}

# bounded SECONDS PROGRAM...: the program, killed if it outlives SECONDS.
bounded() {
    local seconds=$1
    shift
    timeout --kill-after=30 "$seconds" "$@"
}

# The modelctl CLI and the e2e helpers, on the throwaway copy.
modelctl() {
    (cd "$PROJECT" && PYTHONPATH="$PROJECT" bounded "$STEP_SECONDS" "$PYTHON" -m scripts.modelctl.cli --root "$PROJECT" "$@")
}

helper() {
    (cd "$PROJECT" && PYTHONPATH="$PROJECT" bounded "$UP_SECONDS" "$PYTHON" -m scripts.e2e.helpers --root "$PROJECT" "$@")
}

# pulumi in the copy, bounded by UP_SECONDS (`timeout` runs programs, not shell functions).
pulumi_in_project() {
    (cd "$PROJECT" && PYTHONPATH="$PROJECT" bounded "$UP_SECONDS" pulumi "$@")
}

setup_logs() {
    rm -rf "$LOG_DIR"
    mkdir -p "$LOG_DIR"
}

require_tools() {
    local tool missing=()
    for tool in "${REQUIRED_TOOLS[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        log "missing: ${missing[*]} (make e2e needs ${REQUIRED_TOOLS[*]}; see the README, \"See it serve\")"
        return 1
    fi
    if [[ ! -x "$PYTHON" ]]; then
        log "missing: $PYTHON (run \`make install\` first)"
        return 1
    fi
    if ! docker info >/dev/null 2>&1; then
        log "docker is installed but its daemon does not answer \`docker info\`; start Docker"
        return 1
    fi
}

make_workdir() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/model-serving-e2e.XXXXXX")" || return 1
    # kind writes the cluster's credentials here and kubectl, Pulumi's provider and modelctl read
    # them from here: the user's ~/.kube/config is never touched.
    export KUBECONFIG="$WORK/kubeconfig"
    log "work directory $WORK"
}

create_cluster() {
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "a kind cluster named $CLUSTER exists already; not touching it (kind delete cluster --name $CLUSTER)"
        return 1
    fi
    CLUSTER_CREATED=1
    run kind bounded "$CLUSTER_SECONDS" kind create cluster --name "$CLUSTER" \
        --config "$E2E_DIR/kind-config.yaml" --wait 180s
}

# A copy of the project in git (rollback reads the manifest's history), with its own
# manifests: the e2e publishes and serves versions there, never in the working tree.
prepare_project() {
    local name
    PROJECT="$WORK/project"
    mkdir -p "$PROJECT" || return 1
    for name in "${PROJECT_FILES[@]}"; do
        cp -R "$ROOT/$name" "$PROJECT/$name" || return 1
    done
    ln -s "$ROOT/.venv" "$PROJECT/.venv" || return 1 # Pulumi.yaml: the python runtime's virtualenv
    run project git -C "$PROJECT" init -q -b e2e || return 1
    commit "the project as it is"
}

commit() {
    run project git -C "$PROJECT" add -A || return 1
    run project git -C "$PROJECT" -c user.name=e2e -c user.email=e2e@example.invalid \
        commit -q --allow-empty -m "e2e: $1"
}

# A file backend in the work directory. PULUMI_BACKEND_URL selects it for this process only,
# instead of `pulumi login`, which would change the user's current login in
# ~/.pulumi/credentials.json (pulumi/pulumi#5789 added the variable for exactly this).
pulumi_backend() {
    mkdir -p "$WORK/pulumi-state" || return 1
    export PULUMI_BACKEND_URL="file://$WORK/pulumi-state"
    # Encrypts the throwaway stacks' secrets (there are none); the state is deleted with $WORK.
    export PULUMI_CONFIG_PASSPHRASE="e2e-throwaway"
    export PULUMI_SKIP_UPDATE_CHECK=true
    # pulumi-kubernetes >= 4.29 creates objects client-side and refuses one that exists
    # (pulumi/pulumi-kubernetes v4.29.0 release notes, #2926) unless upsertExistingObjects is
    # set; the e2e creates the models' namespace first, to hold the prerequisite Secrets that
    # the stack's `external` list names, so Pulumi must adopt it.
    export PULUMI_K8S_UPSERT_EXISTING_OBJECTS=true
    run pulumi pulumi whoami --verbose
}

install_minio() {
    local user password
    user="e2e-$(openssl rand -hex 4)" || return 1
    password="$(openssl rand -hex 16)" || return 1
    # The publisher, the artifact checks and the fetcher all use these (the fetcher from a Secret).
    export AWS_ACCESS_KEY_ID="$user" AWS_SECRET_ACCESS_KEY="$password" AWS_DEFAULT_REGION=us-east-1
    # Credentials go to kubectl in files, never on a command line: the logged commands are uploaded.
    (umask 077 && printf 'user=%s\npassword=%s\n' "$user" "$password" >"$WORK/minio-root.env") || return 1
    (umask 077 && printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$user" "$password" \
        >"$WORK/minio-credentials.env") || return 1
    run minio kubectl --context "$CONTEXT" create namespace storage || return 1
    run minio kubectl --context "$CONTEXT" -n storage create secret generic minio-root \
        --from-env-file="$WORK/minio-root.env" || return 1
    run minio kubectl --context "$CONTEXT" apply -f "$E2E_DIR/minio.yaml" || return 1
    run minio kubectl --context "$CONTEXT" -n storage rollout status deployment/minio --timeout "${WAIT_SECONDS}s"
}

# port_forward NAME NAMESPACE TARGET LOCAL:REMOTE: a background port-forward on 127.0.0.1,
# stopped by teardown (FORWARD_PID names it); returns once the local port accepts connections.
port_forward() {
    local name=$1 namespace=$2 target=$3 ports=$4 deadline status
    log "port-forward $namespace/$target $ports (log: $name-forward.log)"
    kubectl --context "$CONTEXT" -n "$namespace" port-forward --address 127.0.0.1 "$target" "$ports" \
        >>"$LOG_DIR/$name-forward.log" 2>&1 &
    FORWARD_PID=$!
    BACKGROUND_PIDS+=("$FORWARD_PID")
    deadline=$((SECONDS + 60))
    while :; do
        # curl exits 7 ("Failed to connect") while nothing listens; any other outcome, an HTTP
        # answer or a TLS port's refusal of plain http, means the port is open.
        status=0
        curl -s -o /dev/null --max-time 2 "http://127.0.0.1:${ports%%:*}/" || status=$?
        ((status != 7)) && return 0
        ((SECONDS < deadline)) || break
        sleep 1
    done
    log "port-forward $namespace/$target did not listen within 60 s"
    return 1
}

# newest_version MODEL: the highest version the copy's manifest lists.
newest_version() {
    "$PYTHON" -c 'import sys, yaml; print(max(yaml.safe_load(open(sys.argv[1]))["versions"]))' \
        "$PROJECT/models/$1.yaml"
}

# Train two versions and publish both to MinIO through the port-forward; sets FIRST, SECOND.
train_and_publish() {
    local newest version
    newest="$(newest_version "$MODEL")" || return 1
    FIRST=$((newest + 1))
    SECOND=$((newest + 2))
    for version in "$FIRST" "$SECOND"; do
        run train modelctl train "$MODEL" --version "$version" --out "$WORK/trained" || return 1
        run publish modelctl publish "$MODEL" "$WORK/trained/$MODEL/$version" --stack "$STACK" \
            --version "$version" --quiet || return 1
    done
    commit "publish $MODEL versions $FIRST and $SECOND"
}

# Train and publish one version of the pool's co-tenant (the same bucket as iris's); sets PEER_VERSION.
train_and_publish_peer() {
    local newest
    newest="$(newest_version "$PEER")" || return 1
    PEER_VERSION=$((newest + 1))
    run train modelctl train "$PEER" --version "$PEER_VERSION" --out "$WORK/trained" || return 1
    run publish modelctl publish "$PEER" "$WORK/trained/$PEER/$PEER_VERSION" --stack "$POOLS_STACK" \
        --version "$PEER_VERSION" --quiet || return 1
    commit "publish $PEER version $PEER_VERSION"
}

# install_prerequisites STACK NAMESPACE: what the stack's `external` list names, in the models'
# namespace: the Gateway's TLS certificate (self-signed for the host) and MinIO's credentials
# for the fetcher (the root user's: this MinIO lives as long as the run).
install_prerequisites() {
    local namespace=$2 tls="$WORK/tls"
    mkdir -p "$tls" || return 1
    if [[ ! -f "$tls/tls.crt" ]]; then
        run prerequisites openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$HOST" \
            -addext "subjectAltName=DNS:$HOST" -keyout "$tls/tls.key" -out "$tls/tls.crt" || return 1
    fi
    run prerequisites kubectl --context "$CONTEXT" create namespace "$namespace" || return 1
    run prerequisites kubectl --context "$CONTEXT" -n "$namespace" create secret tls models-kind-tls \
        --cert "$tls/tls.crt" --key "$tls/tls.key" || return 1
    run prerequisites kubectl --context "$CONTEXT" -n "$namespace" create secret generic minio-credentials \
        --from-env-file="$WORK/minio-credentials.env"
}

# serve VERSION: the manifest edit of a reviewed version bump, committed on the copy.
serve() {
    serve_in "$ENVIRONMENT" "$MODEL" "$1"
}

# serve_in ENVIRONMENT MODEL VERSION: the same, for any model and environment.
serve_in() {
    run serve helper serve "$2" --env "$1" --version "$3" || return 1
    commit "$2 version $3 stable in $1"
}

pulumi_up() {
    local stack=$1
    run "pulumi-$stack" pulumi_in_project stack select --create "$stack" || return 1
    run "pulumi-$stack" pulumi_in_project up --stack "$stack" --yes --skip-preview --non-interactive \
        --suppress-progress
}

pulumi_destroy() {
    local stack=$1
    run "pulumi-$stack" pulumi_in_project destroy --stack "$stack" --yes --non-interactive --suppress-progress
}

# The Envoy Service Envoy Gateway created for the stack's Gateway, found by the labels its
# quickstart selects by (gateway.envoyproxy.io/owning-gateway-{namespace,name}), port-forwarded
# to 127.0.0.1:$GATEWAY_PORT.
forward_gateway() {
    local namespace=$1 service deadline=$((SECONDS + WAIT_SECONDS))
    local selector="gateway.envoyproxy.io/owning-gateway-namespace=$namespace,gateway.envoyproxy.io/owning-gateway-name=models"
    while :; do
        service="$(kubectl --context "$CONTEXT" -n envoy-gateway-system get service -o name -l "$selector" \
            2>>"$LOG_DIR/gateway.log" | head -n 1)" || true
        [[ -n "$service" ]] && break
        ((SECONDS < deadline)) || {
            log "no Envoy Service for Gateway $namespace/models within ${WAIT_SECONDS} s"
            return 1
        }
        sleep 5
    done
    port_forward gateway envoy-gateway-system "$service" "$GATEWAY_PORT:443" || return 1
    GATEWAY_FORWARD=$FORWARD_PID
}

stop_gateway_forward() {
    if [[ -n "$GATEWAY_FORWARD" ]]; then
        kill "$GATEWAY_FORWARD" 2>/dev/null || true
        wait "$GATEWAY_FORWARD" 2>/dev/null || true
        GATEWAY_FORWARD=""
    fi
}

# gateway_curl PATH [CURL ARGS...]: one bounded HTTPS request to the stack's host through the
# port-forward, trusting only the e2e's own certificate.
gateway_curl() {
    local path=$1
    shift
    curl -sS --max-time "$REQUEST_SECONDS" --cacert "$WORK/tls/tls.crt" \
        --resolve "$HOST:$GATEWAY_PORT:127.0.0.1" "https://$HOST:$GATEWAY_PORT$path" "$@"
}

# The models' `serving.example_request`s (tests/test_e2e.py holds them to the manifests).
PREDICT_BODY='{"instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}'
PEER_PREDICT_BODY='{"instances": [{"distance_km": 5.2, "duration_min": 14.0, "hour": 9, "passengers": 1, "pickup_zone": "downtown"}]}'

# predict [MODEL]: one prediction of MODEL (default iris) through the Gateway, on the path
# clients use; prints the HTTP status.
predict() {
    local model=${1:-$MODEL} body=$PREDICT_BODY
    if [[ "$model" == "$PEER" ]]; then body=$PEER_PREDICT_BODY; fi
    gateway_curl "/v1/models/$model:predict" -o /dev/null -w '%{http_code}' \
        -H 'Content-Type: application/json' --data "$body"
}

# serving_version [MODEL]: the version TF-Serving reports AVAILABLE behind the Gateway (one request).
serving_version() {
    gateway_curl "/v1/models/${1:-$MODEL}" | tr -d ' \n' |
        sed -n 's/.*"version":"\([0-9]*\)","state":"AVAILABLE".*/\1/p'
}

# expect_serving VERSION [MODEL]: the Gateway answers MODEL's status with VERSION and a prediction
# with 200, retrying for up to WAIT_SECONDS (a new Gateway or route takes a moment to be programmed).
expect_serving() {
    local want=$1 model=${2:-$MODEL} got="" code="" deadline=$((SECONDS + WAIT_SECONDS))
    while ((SECONDS < deadline)); do
        got="$(serving_version "$model")" || got=""
        code="$(predict "$model")" || code=""
        if [[ "$got" == "$want" && "$code" == 200 ]]; then
            log "$model: serving version $want through the Gateway; predict answered 200"
            return 0
        fi
        sleep 3
    done
    log "expected version $want serving and predict 200 ($model); got version '${got}', predict '${code}'"
    return 1
}

# request_loop OUTFILE [MODEL]: predictions of MODEL (default iris) one after another until the
# file OUTFILE.stop appears, LOOP_MAX_REQUESTS were sent or LOOP_MAX_SECONDS passed; one HTTP
# status per line in OUTFILE (000: no answer).
request_loop() {
    local out=$1 model=${2:-$MODEL} sent=0 deadline=$((SECONDS + LOOP_MAX_SECONDS)) code
    : >"$out"
    while ((sent < LOOP_MAX_REQUESTS && SECONDS < deadline)) && [[ ! -e "$out.stop" ]]; do
        code="$(predict "$model" 2>/dev/null)" || true
        printf '%s\n' "${code:-000}" >>"$out"
        sent=$((sent + 1))
        sleep "$LOOP_PAUSE"
    done
}

# start_request_loop OUTFILE [MODEL]: request_loop in the background (LOOP_PID).
start_request_loop() {
    rm -f "$1.stop"
    request_loop "$1" "${2:-$MODEL}" &
    LOOP_PID=$!
    BACKGROUND_PIDS+=("$LOOP_PID")
    log "request loop started ($1; at most $LOOP_MAX_REQUESTS requests and $LOOP_MAX_SECONDS s)"
}

# stop_request_loop OUTFILE [PID]: lets the loop (default the last started) finish its request,
# and waits for it.
stop_request_loop() {
    touch "$1.stop"
    wait "${2:-$LOOP_PID}" || true
}

# count_failures OUTFILE: requests that were not answered 200.
count_failures() {
    grep -cv '^200$' "$1" || true
}

# no_failed_requests OUTFILE WHAT: at least one request was sent and every one answered 200.
no_failed_requests() {
    local total failures
    total="$(wc -l <"$1" | tr -d ' ')"
    failures="$(count_failures "$1")"
    log "$2: $total requests during \`pulumi up\`, $failures failed"
    if ((total == 0)); then
        log "the request loop sent nothing ($1)"
        return 1
    fi
    ((failures == 0))
}

# The version bump under traffic: no request may fail, and the new version serves at the end.
bump_under_traffic() {
    local loop="$LOG_DIR/requests-bump.txt"
    serve "$SECOND" || return 1
    start_request_loop "$loop"
    if ! pulumi_up "$STACK"; then
        stop_request_loop "$loop"
        return 1
    fi
    stop_request_loop "$loop"
    no_failed_requests "$loop" "version bump $FIRST -> $SECOND" || return 1
    expect_serving "$SECOND"
}

rollback() {
    run rollback modelctl rollback "$MODEL" --env "$ENVIRONMENT" || return 1
    commit "roll $MODEL back in $ENVIRONMENT" || return 1
    pulumi_up "$STACK" || return 1
    expect_serving "$FIRST"
}

# shadow_predictions: the successful prediction calls the shadow's pods served, from TF-Serving's
# own metrics on its REST port (infra/model/tfserving.py PROMETHEUS_PATH) through the port-forward:
# `request_latency_count` with API "predict" (the kubelet's probes carry an empty API,
# infra/model/observability.py); prints a whole number (0 when none yet).
shadow_predictions() {
    curl -sS --max-time "$REQUEST_SECONDS" "http://127.0.0.1:$SHADOW_PORT/monitoring/prometheus/metrics" |
        awk -v model="model_name=\"$MODEL\"" '
            /^:tensorflow:serving:request_latency_count\{/ && /API="predict"/ && index($0, model) { sum += $NF }
            END { printf "%d\n", sum }'
}

# Shadow traffic (docs/shadow.md): version $SECOND as the shadow of the stable $FIRST, every call
# mirrored. Clients must only ever see the stable version (Envoy discards the mirror's answers)
# while the shadow's pods serve the mirrored predictions. Then the shadow goes (the Flagger stack,
# which serves the same environment, refuses one).
shadow_takes_mirrored_calls_only() {
    local deadline=$((SECONDS + WAIT_SECONDS)) sent=0 served=0 got code
    run shadow helper shadow "$MODEL" --env "$ENVIRONMENT" --version "$SECOND" --percent 100 || return 1
    commit "$MODEL version $SECOND as the shadow in $ENVIRONMENT" || return 1
    pulumi_up "$STACK" || return 1
    port_forward shadow models "service/$MODEL-shadow" "$SHADOW_PORT:8501" || return 1
    while ((SECONDS < deadline)); do
        got="$(serving_version)" || got=""
        code="$(predict)" || code=""
        sent=$((sent + 1))
        if [[ "$got" != "$FIRST" || "$code" != 200 ]]; then
            log "call $sent: version '${got}', predict '${code}'; clients must see only the stable version $FIRST"
            return 1
        fi
        served="$(shadow_predictions)" || served=0
        ((${served:-0} > 0)) && break
        sleep 1
    done
    if ((${served:-0} == 0)); then
        log "the shadow (version $SECOND) served no mirrored prediction within ${WAIT_SECONDS} s ($sent calls sent)"
        return 1
    fi
    log "shadow version $SECOND served $served mirrored predictions; $sent client calls all saw version $FIRST"
    run shadow helper shadow "$MODEL" --env "$ENVIRONMENT" --remove || return 1
    commit "no shadow of $MODEL in $ENVIRONMENT" || return 1
    pulumi_up "$STACK" || return 1
    expect_serving "$FIRST"
}

# Two models from one serving pool (stack kind-pools, docs/pools.md): both answer through their
# own routes, which lead to the pool's Service. Then iris is bumped: the pool's ConfigMap is
# replaced and its one Deployment rolls (maxUnavailable 0), so the co-tenant's pods restart too.
# Under a request loop per model, no request of either may fail: the old pods serve both models
# until the new ones are ready. The kind stack goes first (it installs the same add-ons, on the
# one node), and this stack goes at the end, to make room for the Flagger stack.
pool_serves_two_models_and_bumps_one() {
    local model_loop="$LOG_DIR/requests-pool-$MODEL.txt" peer_loop="$LOG_DIR/requests-pool-$PEER.txt"
    local model_pid peer_pid members up_failed=0
    pulumi_destroy "$STACK" || return 1
    stop_gateway_forward
    train_and_publish_peer || return 1
    serve_in "$POOLS_ENVIRONMENT" "$MODEL" "$FIRST" || return 1
    serve_in "$POOLS_ENVIRONMENT" "$PEER" "$PEER_VERSION" || return 1
    install_prerequisites "$POOLS_STACK" "$POOLS_NAMESPACE" || return 1
    pulumi_up "$POOLS_STACK" || return 1
    # The stack's `pools` output: shard -> members, by name (infra/program.py).
    members="$(pulumi_in_project stack output pools --stack "$POOLS_STACK" --json \
        2>>"$LOG_DIR/pulumi-$POOLS_STACK.log" | tr -d ' \n')" || return 1
    if [[ "$members" != "{\"$POOL_SHARD\":[\"$MODEL\",\"$PEER\"]}" ]]; then
        log "expected $MODEL and $PEER in pool $POOL_SHARD (stack output pools); got: ${members:-nothing}"
        return 1
    fi
    log "pool $POOL_SHARD serves $MODEL and $PEER"
    forward_gateway "$POOLS_NAMESPACE" || return 1
    expect_serving "$FIRST" "$MODEL" || return 1
    expect_serving "$PEER_VERSION" "$PEER" || return 1
    serve_in "$POOLS_ENVIRONMENT" "$MODEL" "$SECOND" || return 1
    start_request_loop "$model_loop" "$MODEL"
    model_pid=$LOOP_PID
    start_request_loop "$peer_loop" "$PEER"
    peer_pid=$LOOP_PID
    pulumi_up "$POOLS_STACK" || up_failed=1
    stop_request_loop "$model_loop" "$model_pid"
    stop_request_loop "$peer_loop" "$peer_pid"
    ((up_failed == 0)) || return 1
    no_failed_requests "$model_loop" "pool $POOL_SHARD: $MODEL $FIRST -> $SECOND" || return 1
    no_failed_requests "$peer_loop" "pool $POOL_SHARD: $PEER (co-tenant, version $PEER_VERSION) during the bump" ||
        return 1
    expect_serving "$SECOND" "$MODEL" || return 1
    expect_serving "$PEER_VERSION" "$PEER" || return 1
    pulumi_destroy "$POOLS_STACK" || return 1
    stop_gateway_forward
}

# With Prometheus and Flagger: a version that loads but fails every prediction must be rolled
# back by Flagger on its own, while the stable version keeps serving.
flagger_rolls_back_a_failing_version() {
    local broken=$((SECOND + 1)) loop="$LOG_DIR/requests-flagger.txt" failures total
    # The kind stack's Gateway, Envoy Gateway and metrics-server go (after the pool step, nothing
    # is left of it); MinIO and its port-forward stay.
    pulumi_destroy "$STACK" || return 1
    stop_gateway_forward
    install_prerequisites "$FLAGGER_STACK" models-flagger || return 1
    pulumi_up "$FLAGGER_STACK" || return 1
    # Flagger's first sight of the target only initialises the primary (no analysis).
    run flagger helper await-flagger --stack "$FLAGGER_STACK" --model "$MODEL" --expect promoted \
        --timeout "$FLAGGER_SECONDS" || return 1
    forward_gateway models-flagger || return 1
    expect_serving "$FIRST" || return 1
    run broken helper break-model "$WORK/trained/$MODEL/$FIRST" "$WORK/trained/$MODEL/$broken" || return 1
    run publish modelctl publish "$MODEL" "$WORK/trained/$MODEL/$broken" --stack "$FLAGGER_STACK" \
        --version "$broken" --quiet || return 1
    serve "$broken" || return 1
    # Flagger's checks measure prediction calls: the loop is the analysis' traffic.
    start_request_loop "$loop"
    if ! pulumi_up "$FLAGGER_STACK" ||
        ! run flagger helper await-flagger --stack "$FLAGGER_STACK" --model "$MODEL" --expect failed \
            --timeout "$FLAGGER_SECONDS"; then
        stop_request_loop "$loop"
        return 1
    fi
    stop_request_loop "$loop"
    total="$(wc -l <"$loop" | tr -d ' ')"
    failures="$(count_failures "$loop")"
    log "Flagger rolled version $broken back; $failures of $total requests failed during its analysis (the canary's share)"
    run flagger kubectl --context "$CONTEXT" -n models-flagger describe canaries.flagger.app || true
    expect_serving "$FIRST"
}

# The change of the gRPC-only release: TF-Serving listens for gRPC on 8502 instead of 8500 (the
# first server argument, infra/model/tfserving.py server_args); REST, the readiness probe (REST)
# and the REST metrics stay good, so only the `grpc-predict` webhook (ghz against the canary
# Service's port 8500) can see it. The `test` op refuses to patch a template not shaped so.
GRPC_ARG=/spec/template/spec/containers/0/args/0
GRPC_BREAK_PATCH='[{"op": "test", "path": "'$GRPC_ARG'", "value": "--port=8500"}, {"op": "replace", "path": "'$GRPC_ARG'", "value": "--port=8502"}]'

# A release that breaks only gRPC must be rolled back: Flagger's Gateway API router shifts
# HTTPRoutes only, so gRPC clients never reach a canary, and before the load tester's gRPC
# check such a release was promoted on REST metrics alone. First the good version is served
# again (one analysis that promotes it), then the target Deployment gets the gRPC-breaking
# change directly (Flagger analyses any change of its target's pod template), and the rollback
# must name the `grpc-predict` check (Flagger's event "Halt <canary> advancement external check
# grpc-predict failed", fluxcd/flagger@v1.44.0 pkg/controller/scheduler.go:L757-L759).
flagger_rolls_back_a_grpc_only_failure() {
    local target events="$LOG_DIR/flagger-grpc-events.txt"
    serve "$FIRST" || return 1
    pulumi_up "$FLAGGER_STACK" || return 1
    run flagger-grpc helper await-flagger --stack "$FLAGGER_STACK" --model "$MODEL" --expect promoted \
        --timeout "$FLAGGER_SECONDS" || return 1
    # Flagger's target keeps the model's name as its `app` label; the primary's is `<model>-primary`.
    target="$(bounded 60 kubectl --context "$CONTEXT" -n models-flagger get deployments -l "app=$MODEL" -o name)" ||
        return 1
    if [[ "$target" != deployment.apps/* || "$target" == *$'\n'* ]]; then
        log "expected one Deployment labelled app=$MODEL, found: ${target:-none}"
        return 1
    fi
    run flagger-grpc kubectl --context "$CONTEXT" -n models-flagger patch "$target" --type json \
        -p "$GRPC_BREAK_PATCH" || return 1
    run flagger-grpc helper await-flagger --stack "$FLAGGER_STACK" --model "$MODEL" --expect failed \
        --timeout "$FLAGGER_SECONDS" || return 1
    bounded 60 kubectl --context "$CONTEXT" -n models-flagger get events \
        --field-selector involvedObject.kind=Canary -o 'jsonpath={range .items[*]}{.message}{"\n"}{end}' \
        >"$events" || return 1
    if ! grep -q "external check grpc-predict failed" "$events"; then
        log "Flagger rolled back, but not on the grpc-predict check (events in $events)"
        return 1
    fi
    log "Flagger rolled back a release broken on gRPC only (grpc-predict failed; REST kept passing)"
    expect_serving "$FIRST"
}

stop_background() {
    local pid
    for pid in "${BACKGROUND_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BACKGROUND_PIDS=()
}

# What a failed run leaves for its reader, before the cluster goes.
collect_diagnostics() {
    local kinds
    log "collecting cluster state into $LOG_DIR/cluster-*.log"
    # One kind per call: `get` fails as a whole when one kind (a CRD) is not installed.
    for kinds in all events gateways.gateway.networking.k8s.io httproutes.gateway.networking.k8s.io \
        canaries.flagger.app; do
        bounded 120 kubectl --context "$CONTEXT" get "$kinds" -A -o wide >>"$LOG_DIR/cluster-objects.log" 2>&1 || true
    done
    bounded 120 kubectl --context "$CONTEXT" describe pods -A >"$LOG_DIR/cluster-pods.log" 2>&1 || true
}

# Always runs (trap on EXIT): background processes, the cluster if this run created it, the
# work directory. Keeps the exit status of the run.
teardown() {
    local status=$?
    trap - EXIT INT TERM
    stop_background
    if [[ -n "$CLUSTER_CREATED" ]]; then
        ((status == 0)) || collect_diagnostics
        run kind bounded 300 kind delete cluster --name "$CLUSTER" || log "could not delete kind cluster $CLUSTER"
    fi
    if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
    if ((status == 0)); then log "passed; logs in $LOG_DIR"; else log "failed (exit $status); logs in $LOG_DIR"; fi
    exit "$status"
}

main() {
    setup_logs
    require_tools || die "install what is missing and run again"
    trap teardown EXIT
    trap 'exit 130' INT TERM
    make_workdir || die "a work directory"
    create_cluster || die "kind create cluster"
    prepare_project || die "copying the project"
    pulumi_backend || die "the Pulumi backend in $WORK"
    install_minio || die "installing MinIO"
    port_forward store storage service/minio "$STORE_PORT:9000" || die "port-forward to MinIO"
    run minio helper create-bucket --stack "$STACK" || die "creating the bucket"
    train_and_publish || die "training and publishing $MODEL"
    install_prerequisites "$STACK" models || die "the stack's prerequisites"
    serve "$FIRST" || die "serving version $FIRST"
    pulumi_up "$STACK" || die "pulumi up --stack $STACK"
    forward_gateway models || die "port-forward to the Gateway"
    expect_serving "$FIRST" || die "version $FIRST through the Gateway"
    bump_under_traffic || die "the version bump under traffic"
    rollback || die "the rollback"
    shadow_takes_mirrored_calls_only || die "the shadow's mirrored calls"
    pool_serves_two_models_and_bumps_one || die "two models from one serving pool, one bumped under traffic"
    flagger_rolls_back_a_failing_version || die "Flagger's rollback of a failing version"
    flagger_rolls_back_a_grpc_only_failure || die "Flagger's rollback of a release broken on gRPC only"
    log "every step passed"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
