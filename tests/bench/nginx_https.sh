# Sourced by the benchmarks: one nginx worker serving HTTPS keep-alive with 3-byte responses,
# pinned to CPU 0 so that every figure is per served core.
#
#   nginx_https DIR PORT   start it, its files in DIR
#   nginx_stop DIR         stop it

nginx_https() {
  local dir=$1 port=$2
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/body;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
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
