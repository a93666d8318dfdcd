// The CometD project's Node.js server (long-polling only) on loopback, for bench/run.py.
// usage: node cometd_server.js PORT
'use strict';
const http = require('http');
const cometd = require('cometd-nodejs-server');

const port = parseInt(process.argv[2] || '8081', 10);
const server = cometd.createCometDServer({
    logLevel: 'info',
    timeout: 25000,       // the same hold time as cometd-broker's default
    maxInterval: 10000,
});
const httpServer = http.createServer((req, res) => {
    if (req.url.startsWith('/cometd')) {
        server.handle(req, res);
    } else {
        res.statusCode = 404;
        res.end();
    }
});
httpServer.timeout = 120000;
httpServer.keepAliveTimeout = 60000;
httpServer.headersTimeout = 65000;
httpServer.maxRequestsPerSocket = 0;
httpServer.listen(port, '127.0.0.1', () => {
    console.log(`cometd-nodejs-server listening on http://127.0.0.1:${port}/cometd`);
});
process.on('SIGTERM', () => { httpServer.close(); process.exit(0); });
