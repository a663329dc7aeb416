// The live targets of a TCP app, for nginx's proxy_pass (njs; loaded only when deploy.app_port is set).
//
// A deploy switches versions by replacing targets.json (mounted at /etc/nginx/upstream.d) with one
// rename(2): every request reads it afresh, so the very next request goes to the new containers,
// with no nginx reload and no client connection closed. "fallback" lists the old containers while
// the deploy checks the new ones after the switch: a request that could not reach a new container
// (nginx answers 502/504 before anything reached the client) is tried there, if it is idempotent.
var fs = require('fs');

var TARGETS = '/etc/nginx/upstream.d/targets.json';
var NOWHERE = '127.0.0.1:1';  // refused at once: nginx answers 502 (no app is live)
var IDEMPOTENT = {GET: 1, HEAD: 1, OPTIONS: 1, PUT: 1, DELETE: 1, TRACE: 1};

function read() {
    try {
        return JSON.parse(fs.readFileSync(TARGETS, 'utf8'));
    } catch (e) {
        return {};
    }
}

function pick(list) {
    if (!Array.isArray(list) || list.length === 0) {
        return '';
    }
    return list[Math.floor(Math.random() * list.length)];
}

function target(r) {
    return pick(read().live) || NOWHERE;
}

// Where to retry a request the first target could not answer: the old containers while there are
// any, else the live ones (a deploy may have switched back since the request started), never the
// address that just failed ($upstream_addr).
function fallback(r) {
    if (!IDEMPOTENT[r.method]) {
        return '';
    }
    var targets = read();
    var failed = r.variables.upstream_addr || '';
    var pool = Array.isArray(targets.fallback) && targets.fallback.length ? targets.fallback : targets.live;
    return pick((Array.isArray(pool) ? pool : []).filter(function (a) { return failed.indexOf(a) < 0; }));
}

export default {target, fallback};
