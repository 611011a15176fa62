"""Drives py-eureka-client against a Eureka server (here, the fake one).

    eureka_client.py register SERVER_URL APP ID ADDRESS PORT META_JSON
        registers (1 s renewals, 5 s lease), prints "registered", and
        deregisters when stdin closes.
    eureka_client.py lookup SERVER_URL APP
        prints the instances of APP as JSON, read through the client's XML
        parsing of GET /apps/APP and of the full registry GET /apps/.
"""
import asyncio
import json
import sys

import py_eureka_client.eureka_client as eureka_client
from py_eureka_client import eureka_basic


def register(server, app, instance_id, address, port, meta):
    eureka_client.init(
        eureka_server=server,
        app_name=app,
        instance_id=instance_id,
        instance_host=address,
        instance_ip=address,
        instance_port=int(port),
        renewal_interval_in_secs=1,
        duration_in_secs=5,
        metadata=json.loads(meta),
        should_discover=False,
    )
    print("registered", flush=True)
    sys.stdin.read()
    eureka_client.stop()
    print("deregistered", flush=True)


def view(instance):
    return {
        "id": instance.instanceId,
        "app": instance.app,
        "address": instance.ipAddr,
        "host": instance.hostName,
        "port": instance.port.port,
        "port_enabled": instance.port.enabled,
        "status": instance.status,
        "metadata": instance.metadata,
        "lease": instance.leaseInfo.durationInSecs,
    }


async def lookup(server, app):
    try:
        one = (await eureka_basic.get_application(server, app)).instances
    except Exception as e:  # the server answers 404 for an app with no instances
        if "404" not in str(e):
            raise
        one = []
    everything = await eureka_basic.get_applications(server)
    from_registry = [view(i) for a in everything.applications if a.name == app.upper() for i in a.instances]
    print(json.dumps({"application": [view(i) for i in one], "registry": from_registry}), flush=True)


def main():
    mode = sys.argv[1]
    if mode == "register":
        register(*sys.argv[2:8])
    elif mode == "lookup":
        asyncio.run(lookup(*sys.argv[2:4]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
