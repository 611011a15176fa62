// Drives eureka-js-client against a Eureka server (here, the fake one).
//
//   node eureka_client.js register HOST PORT BASE APP ID ADDRESS SERVICE_PORT META_JSON
//       registers, prints "registered", deregisters when stdin closes.
//   node eureka_client.js lookup HOST PORT BASE APP
//       fetches the registry (JSON) and prints APP's instances as JSON.
'use strict';
const { Eureka } = require('eureka-js-client');

const [mode, host, port, base, app, ...rest] = process.argv.slice(2);
const silent = { warn() {}, info() {}, debug() {}, error(...args) { console.error(...args); } };
const eureka = {
  host,
  port: Number(port),
  servicePath: `${base.replace(/\/$/, '')}/apps/`,
  heartbeatInterval: 1000,
  registryFetchInterval: 1000,
  maxRetries: 0,
};

function client(instance, registering) {
  return new Eureka({
    logger: silent,
    instance,
    eureka: { ...eureka, registerWithEureka: registering, fetchRegistry: !registering },
  });
}

if (mode === 'register') {
  const [id, address, servicePort, meta] = rest;
  const c = client({
    app,
    instanceId: id,
    hostName: address,
    ipAddr: address,
    port: { $: Number(servicePort), '@enabled': 'true' },
    vipAddress: app.toLowerCase(),
    statusPageUrl: `http://${address}:${servicePort}/`,
    dataCenterInfo: { '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo', name: 'MyOwn' },
    metadata: JSON.parse(meta),
  }, true);
  c.start((err) => {
    if (err) { console.error(err); process.exit(1); }
    console.log('registered');
  });
  process.stdin.resume();
  process.stdin.on('end', () => {
    c.stop((err) => {
      if (err) { console.error(err); process.exit(1); }
      console.log('deregistered');
      process.exit(0);
    });
  });
} else if (mode === 'lookup') {
  const c = client({
    app: 'LOOKER',
    hostName: 'localhost',
    ipAddr: '127.0.0.1',
    port: { $: 1, '@enabled': 'true' },
    vipAddress: 'looker',
    dataCenterInfo: { '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo', name: 'MyOwn' },
  }, false);
  c.start((err) => {
    if (err) { console.error(err); process.exit(1); }
    const instances = c.getInstancesByAppId(app).map((i) => ({
      id: i.instanceId,
      address: i.ipAddr,
      port: Number(i.port.$),
      status: i.status,
      metadata: i.metadata,
    }));
    console.log(JSON.stringify({ instances }));
    c.stop(() => process.exit(0));
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
