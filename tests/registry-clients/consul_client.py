"""Drives py-consul against a Consul agent (here, the fake one).

    consul_client.py register AGENT NAME ID ADDRESS PORT META_JSON
        registers with a 3 s TTL check passed every 0.5 s, prints
        "registered", and deregisters when stdin closes.
    consul_client.py lookup AGENT NAME [INDEX]
        prints the passing instances as JSON; with INDEX, as a blocking
        query waiting up to 5 s for the index to move past it.

The ACL token, if any, comes from CONSUL_HTTP_TOKEN, as py-consul reads it.
"""
import json
import sys
import threading

import consul


def agent(address):
    host, port = address.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def register(c, name, service_id, address, port, meta):
    c.agent.service.register(
        name,
        service_id=service_id,
        address=address,
        port=int(port),
        tags=["python"],
        meta=json.loads(meta),
        check=consul.Check.ttl("3s"),
        weights={"Passing": 2, "Warning": 1},
    )
    check = "service:" + service_id
    c.agent.check.ttl_pass(check)
    print("registered", flush=True)
    stop = threading.Event()

    def beat():
        while not stop.wait(0.5):
            c.agent.check.ttl_pass(check)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    sys.stdin.read()
    stop.set()
    beating.join()
    c.agent.service.deregister(service_id)
    print("deregistered", flush=True)


def lookup(c, name, index=None):
    if index is None:
        index, nodes = c.health.service(name, passing=True)
    else:
        index, nodes = c.health.service(name, passing=True, index=index, wait="5s")
    instances = [
        {
            "id": n["Service"]["ID"],
            "address": n["Service"]["Address"] or n["Node"]["Address"],
            "port": n["Service"]["Port"],
            "tags": n["Service"]["Tags"],
            "meta": n["Service"]["Meta"],
            "weights": n["Service"]["Weights"],
            "checks": [ch["Status"] for ch in n["Checks"]],
        }
        for n in nodes
    ]
    print(json.dumps({"index": index, "instances": instances}), flush=True)


def main():
    mode, address = sys.argv[1], sys.argv[2]
    c = agent(address)
    if mode == "register":
        register(c, *sys.argv[3:8])
    elif mode == "lookup":
        lookup(c, *sys.argv[3:5])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
