//! The `(trellis.method)` policy at work over real sockets: hedging, the
//! proto's timeout as the call's deadline, and the proto's hash key field.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use trellis::client::{Balance, HashKey};
use trellis::client::{ClientConfig, Clients};
use trellis::codegen::Channel;
use trellis::{Code, Registry, Request, Response, Status};
use trellis_tests::proto::trellis::test::policy::v1::accounts_server::{Accounts, AccountsServer};
use trellis_tests::proto::trellis::test::policy::v1::{
    ACCOUNTS_DESCRIPTOR, Account, AccountsClient, GetAccountRequest, RefreshRequest, RenameRequest,
};

/// Answers `GetAccount` after `delay`, naming itself by port.
#[derive(Debug)]
struct Service {
    port: u16,
    delay: Duration,
}

type AccountStream = Pin<Box<dyn Stream<Item = Result<Account, Status>> + Send>>;

#[trellis::async_trait]
impl Accounts for Service {
    async fn get_account(&self, request: Request<GetAccountRequest>) -> Result<Response<Account>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(Account {
            account_id: request.into_inner().account_id,
            name: self.port.to_string(),
        }))
    }

    async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn refresh(&self, _: Request<RefreshRequest>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    type WatchStream = AccountStream;

    async fn watch(&self, _: Request<RefreshRequest>) -> Result<Response<AccountStream>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn audit(&self, _: Request<RefreshRequest>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn close(&self, _: Request<RefreshRequest>) -> Result<Response<Account>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }
}

/// One server per delay; returns a static registry naming them all.
async fn servers(delays: &[Duration]) -> Registry {
    let mut addrs = Vec::new();
    for &delay in delays {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let server = trellis::Server::builder()
            .listen(([127, 0, 0, 1], port).into())
            .add_service(AccountsServer::new(Service { port, delay }))
            .bind()
            .await
            .expect("bind");
        tokio::spawn(server.serve());
        addrs.push(format!("127.0.0.1:{port}"));
    }
    Registry::from_url(&format!("static://{}={}", ACCOUNTS_DESCRIPTOR.name(), addrs.join(",")))
        .expect("registry")
}

fn get(id: &str) -> GetAccountRequest {
    GetAccountRequest { account_id: id.to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_takes_the_first_answer_from_another_instance_within_its_budget() {
    let slow = Duration::from_millis(500);
    let registry = servers(&[slow, slow, Duration::ZERO]).await;
    let channel = Channel::discover(&registry, &ACCOUNTS_DESCRIPTOR).expect("channel");
    let mut client = AccountsClient::new(channel.clone());
    // Within the budget's floor (2 hedges a second over 10 s), every call is
    // rescued: GetAccount hedges after 50 ms, up to 3 attempts in flight.
    for n in 0..8 {
        let start = Instant::now();
        client.get_account(get(&format!("acct-{n}"))).await.expect("answered");
        assert!(start.elapsed() < Duration::from_millis(400), "call {n} waited for a slow instance");
    }
    assert!(channel.stats().hedges >= 1, "{:?}", channel.stats());
    // Past it, calls still succeed, but hedging adds no more than the budget.
    let calls = 60;
    for n in 0..calls {
        client.get_account(get(&format!("more-{n}"))).await.expect("answered");
    }
    let stats = channel.stats();
    assert!(stats.hedges <= 20 + (8 + calls) / 10, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protos_timeout_is_the_calls_deadline() {
    let registry = servers(&[Duration::from_secs(4)]).await;
    let mut client = AccountsClient::discover(&registry).expect("client");
    let start = Instant::now();
    let status = client.get_account(get("late")).await.expect_err("slower than the 2 s policy");
    let took = start.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protos_hash_key_routes_like_a_key_set_in_code() {
    let registry = servers(&[Duration::ZERO; 4]).await;
    let config = ClientConfig { balance: Some(Balance::ConsistentHash), ..ClientConfig::default() };
    let registry = Clients::new(registry).with_config(ACCOUNTS_DESCRIPTOR.name(), config);
    let mut client = AccountsClient::discover(&registry).expect("client");
    // Until every endpoint is known, a key may land elsewhere.
    for n in 0..8 {
        client.get_account(get(&format!("warm-{n}"))).await.expect("call");
    }
    let mut homes = HashMap::new();
    for n in 0..16 {
        let id = format!("acct-{n}");
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..5 {
            seen.push(client.get_account(get(&id)).await.expect("call").into_inner().name);
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "{id} moved between instances: {seen:?}");
        // The same key set in code goes to the same instance.
        let mut request = Request::new(get("ignored-by-routing"));
        request.extensions_mut().insert(HashKey::new(&id));
        let by_code = client.get_account(request).await.expect("call").into_inner().name;
        assert_eq!(by_code, seen[0], "{id}: the proto's key and the code's key disagree");
        homes.insert(id, seen[0].clone());
    }
    let instances: std::collections::HashSet<&String> = homes.values().collect();
    assert!(instances.len() >= 3, "16 keys over 4 instances landed on {}", instances.len());
}

/// The hedge schedule on tokio's paused clock: with the first instance
/// taking 500 ms and the second answering at once, a call takes exactly the
/// 50 ms hedge delay, in virtual time.
#[tokio::test(start_paused = true)]
async fn a_hedge_goes_out_exactly_after_its_delay() {
    let registry = servers(&[Duration::from_millis(500), Duration::ZERO]).await;
    let channel =
        Channel::with_balance(&registry, &ACCOUNTS_DESCRIPTOR, Balance::RoundRobin).expect("channel");
    let mut client = AccountsClient::new(channel.clone());
    let mut hedged = 0;
    for n in 0..6 {
        let hedges_before = channel.stats().hedges;
        let start = tokio::time::Instant::now();
        let account = client.get_account(get(&format!("acct-{n}"))).await.expect("answered").into_inner();
        let took = start.elapsed();
        if channel.stats().hedges > hedges_before {
            // The slow instance was tried first; the hedge answered.
            hedged += 1;
            assert!(took >= Duration::from_millis(50) && took < Duration::from_millis(60), "took {took:?}");
        } else {
            assert!(took < Duration::from_millis(50), "no hedge, yet took {took:?}: {account:?}");
        }
    }
    // Round robin sends every other first attempt to the slow instance.
    assert!(hedged >= 2, "{hedged} hedged calls");
}
