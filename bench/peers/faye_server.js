// Faye's Node.js server (long-polling and websocket) on loopback, for bench/run.py.
// usage: node faye_server.js PORT
'use strict';
const http = require('http');
const faye = require('faye');

const port = parseInt(process.argv[2] || '8082', 10);
const bayeux = new faye.NodeAdapter({ mount: '/cometd', timeout: 25 });
const httpServer = http.createServer((req, res) => {
    res.statusCode = 404;
    res.end();
});
bayeux.attach(httpServer);
httpServer.timeout = 120000;
httpServer.keepAliveTimeout = 60000;
httpServer.headersTimeout = 65000;
httpServer.listen(port, '127.0.0.1', () => {
    console.log(`faye listening on http://127.0.0.1:${port}/cometd`);
});
process.on('SIGTERM', () => { httpServer.close(); process.exit(0); });
