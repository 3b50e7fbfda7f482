#!/usr/bin/env bash
# Requests/s and p99 through `chi proxy` and through nginx (round robin, keepalive) to the same
# three backends, in the same run, with wrk on loopback.
#
#   crates/chi/bench/proxy-vs-nginx.sh [path/to/chi]   # default: target/release/chi
#
# Installs nginx and wrk (Debian packages) and builds chi when missing. Backends are one nginx answering a short
# body on three ports. Both proxies get the same number of workers: nginx `worker_processes N`,
# `chi proxy --workers N`. Rounds alternate which one goes first; each round prints the load
# average, since other work on the machine moves both figures.
# Settings: WORKERS (nproc), ROUNDS (3), WRK_THREADS (2), WRK_CONNS (50), WRK_SECS (10).
set -euo pipefail

CHI=${1:-${CARGO_TARGET_DIR:-target}/release/chi}
WORKERS=${WORKERS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
THREADS=${WRK_THREADS:-2}
CONNS=${WRK_CONNS:-50}
SECS=${WRK_SECS:-10}
# Install what is missing, as on a new machine (Debian's packages; the nginx service is not used).
for tool in nginx wrk; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool (Debian package)" >&2
    apt-get install -y -qq "$tool" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "$tool" >/dev/null; }
  fi
done
if [ ! -x "$CHI" ]; then
  echo "building chi (release)" >&2
  cargo build --release -q -p chi
fi

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$DIR/backends.pid" ] && kill "$(cat "$DIR/backends.pid")" 2>/dev/null || true
  [ -f "$DIR/lb.pid" ] && kill "$(cat "$DIR/lb.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

B1=$(free_port); B2=$(free_port); B3=$(free_port); LB=$(free_port); HOST=$(free_port); PX=$(free_port); PXA=$(free_port)

cat > "$DIR/backends.conf" <<CONF
worker_processes 1;
pid $DIR/backends.pid;
error_log $DIR/backends.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR; proxy_temp_path $DIR; fastcgi_temp_path $DIR; uwsgi_temp_path $DIR; scgi_temp_path $DIR;
  server { listen 127.0.0.1:$B1; location / { return 200 "b1\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "b2\n"; } }
  server { listen 127.0.0.1:$B3; location / { return 200 "b3\n"; } }
}
CONF
cat > "$DIR/lb.conf" <<CONF
worker_processes $WORKERS;
pid $DIR/lb.pid;
error_log $DIR/lb.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR; proxy_temp_path $DIR; fastcgi_temp_path $DIR; uwsgi_temp_path $DIR; scgi_temp_path $DIR;
  upstream web { server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3; keepalive 64; }
  server {
    listen 127.0.0.1:$LB;
    location /web/ { proxy_pass http://web/; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -p "$DIR" -c "$DIR/backends.conf"
nginx -p "$DIR" -c "$DIR/lb.conf"
wait_port "$B3"; wait_port "$LB"

reg() {
  printf 'service_discovery:\n  registration:\n    name: "%s"\n    address: "127.0.0.1"\n    port: %s\n' "$1" "$2" > "$DIR/$1-$2.yaml"
}
reg registry-host 1
"$CHI" agent -c "$DIR/registry-host-1.yaml" --admin "127.0.0.1:$HOST" > "$DIR/host.log" 2>&1 & PIDS+=($!)
wait_port "$HOST"
for p in $B1 $B2 $B3; do
  reg web "$p"
  "$CHI" agent -c "$DIR/web-$p.yaml" --registry "chi://127.0.0.1:$HOST" --admin 127.0.0.1:0 > "$DIR/agent-$p.log" 2>&1 & PIDS+=($!)
done
printf 'service_discovery:\n  load_balancer:\n    strategy: "round_robin"\n' > "$DIR/proxy.yaml"
"$CHI" proxy -c "$DIR/proxy.yaml" --registry "chi://127.0.0.1:$HOST" --listen "127.0.0.1:$PX" --admin "127.0.0.1:$PXA" --workers "$WORKERS" > "$DIR/proxy.log" 2>&1 & PIDS+=($!)
CHI_PID=$!
wait_port "$PX"
for _ in $(seq 50); do
  [ "$(curl -s "http://127.0.0.1:$HOST/v1/services/web" | grep -o '"id"' | wc -l)" = 3 ] && break
  sleep 0.1
done

# One wrk run: prints "req/s p50 p99 errors" (latencies in ms).
# CPU time (clock ticks, all threads) of the given processes.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# One wrk run: prints "req/s p50 p99 cpu-us-per-request errors" (latencies in ms); the CPU is
# that of the proxy's own processes during the run, a figure other load moves less than req/s.
measure() { # url pid...
  local out url=$1 t0 t1 reqs cpu
  shift
  t0=$(ticks "$@")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$url")
  t1=$(ticks "$@")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  awk -v cpu="$cpu" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx|Socket errors/ { errs = errs $0 }
    END { printf "%.0f %.2f %.2f %s %s\n", rps, p50, p99, cpu, (errs == "" ? "-" : errs) }
  ' <<<"$out"
}
NGINX_URL="http://127.0.0.1:$LB/web/"
CHI_URL="http://127.0.0.1:$PX/web/"
wrk -t1 -c10 -d2s "$NGINX_URL" > /dev/null # warm-up
wrk -t1 -c10 -d2s "$CHI_URL" > /dev/null

echo "wrk -t$THREADS -c$CONNS -d${SECS}s, 3 backends (one nginx, 1 worker), round robin, loopback, $(nproc) cores"
echo "workers: nginx worker_processes $WORKERS, chi proxy --workers $WORKERS"
echo
NGINX_PIDS=$(cat "$DIR/lb.pid"; pgrep -P "$(cat "$DIR/lb.pid")")
printf '%-5s %-9s %9s %8s %8s %9s   %-17s %s\n' round proxy "req/s" "p50 ms" "p99 ms" "CPU us/req" "load (1/5/15 min)" errors
RATIOS=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="nginx chi"; else order="chi nginx"; fi
  for who in $order; do
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    if [ "$who" = nginx ]; then
      read -r rps p50 p99 cpu errs < <(measure "$NGINX_URL" $NGINX_PIDS)
    else
      read -r rps p50 p99 cpu errs < <(measure "$CHI_URL" "$CHI_PID")
    fi
    printf '%-5s %-9s %9s %8s %8s %9s   %-17s %s\n' "$round" "$who" "$rps" "$p50" "$p99" "$cpu" "$load" "$errs"
    eval "${who}_rps=$rps ${who}_p99=$p99 ${who}_cpu=$cpu"
  done
  RATIOS+=("$(awk -v a="$chi_rps" -v b="$nginx_rps" -v c="$chi_p99" -v d="$nginx_p99" \
    -v e="$chi_cpu" -v f="$nginx_cpu" \
    'BEGIN { printf "round %d: chi/nginx req/s %.2f, p99 %.2f, CPU per request %.2f", '"$round"', a / b, c / d, e / f }')")
done
echo
printf '%s\n' "${RATIOS[@]}"
echo "(req/s ratio above 1, p99 and CPU ratios below 1 favour chi)"
