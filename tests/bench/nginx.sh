# Sourced by the benchmarks: one nginx worker answering "ok" (3 bytes), pinned to CPU 0 so
# that every figure is per served core.
#
#   nginx_serve DIR PORT KIND   start it, its files in DIR; KIND is one of
#                               https: keep-alive over TLS (a self-signed certificate)
#                               http:  keep-alive, plaintext
#                               close: plaintext, one request per connection (a storm)
#   nginx_stop DIR              stop it

nginx_serve() {
  local dir=$1 port=$2 kind=$3
  local listen="127.0.0.1:$port" conns=1024 keepalive="keepalive_requests 1000000;" tls=""
  case $kind in
    https)
      openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
      listen="$listen ssl"
      tls="ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;"
      ;;
    http) ;;
    close)
      listen="$listen reuseport"
      conns=4096
      keepalive="keepalive_timeout 0;"
      ;;
    *) echo "nginx_serve: unknown kind $kind" >&2; return 1 ;;
  esac
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections $conns; }
http {
  access_log off;
  $keepalive
  client_body_temp_path $dir/body;
  server {
    listen $listen;
    $tls
    location / { return 200 "ok\n"; }
  }
}
CONF
  nginx -c "$dir/nginx.conf"
  sleep 0.5
  local master
  master=$(cat "$dir/nginx.pid")
  taskset -pc 0 "$(pgrep -P "$master" | head -1)" >/dev/null
}

nginx_stop() {
  nginx -c "$1/nginx.conf" -s quit 2>/dev/null || true
}
