// An HTTP/1.1 server for sightline's tests, in node's `http`: keep-alive and pipelined
// requests, request bodies (chunked or not) counted and answered with their length, and one
// response (/stream) written in three chunks, 50 ms apart. Prints "listening on ADDR".
const http = require('http');

http.createServer((req, res) => {
  let n = 0;
  req.on('data', (d) => { n += d.length; });
  req.on('end', () => {
    if (req.url === '/stream') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('a');
      setTimeout(() => res.write('b'), 50);
      setTimeout(() => res.end('c'), 100);
      return;
    }
    const body = req.method === 'POST' ? `got ${n}` : `ok ${req.url}`;
    res.writeHead(req.method === 'POST' ? 201 : 200, { 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
}).listen(0, '127.0.0.1', function () {
  console.log('listening on 127.0.0.1:' + this.address().port);
});
