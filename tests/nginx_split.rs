//! NGINX-compatible cohorts (DESIGN §11) against the real thing: Debian's NGINX runs
//! `split_clients` with the same key string at several percentages (0.01 steps
//! included), and for 10,000 keys the variant it picks equals the one cohort's
//! `/assign` answers for a `hash = "nginx"` route at that percentage. A migration from
//! NGINX keeps every user where they were.
mod support;

use std::sync::Arc;

use cohort::split_clients;
use support::nginx::Nginx;
use support::{client, send, Config, FakeUpstream, Route, TestCohort};

/// (route name, percentage as NGINX and cohort both write it, NGINX's key string).
const SPLITS: [(&str, &str, &str); 7] = [
    ("p0-01", "0.01", "${key}AAA"),
    ("p0-25", "0.25", "${key}AAA"),
    ("p2-5", "2.5", "${key}AAA"),
    ("p10", "10", "checkout-${key}"),
    ("p33-33", "33.33", "${key}AAA"),
    ("p50", "50", "${key}"),
    ("p99-99", "99.99", "${key}AAA"),
];

const KEYS: usize = 10_000;

/// Keys of every length from 1 to 40 bytes, so every MurmurHash2 tail length and
/// block count is exercised; query-safe characters only (NGINX's `$arg_key` is the
/// raw query value). The last few are chosen to sit in the first and the last bucket
/// under `${key}AAA`, where 0.01 % and 99.99 % split: 10,000 random keys would put
/// about one key there.
fn keys() -> Vec<String> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let edge = |bucket: u16| {
        (0..)
            .map(|i| format!("edge-{i}"))
            .filter(move |k| {
                let hash = split_clients::murmur_hash2(format!("{k}AAA").as_bytes());
                split_clients::bucket(hash) == bucket
            })
            .take(EDGE_KEYS)
    };
    let random = (0..KEYS - 2 * EDGE_KEYS).map(|i| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + i % 40;
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
        (0..len)
            .map(|j| alphabet[((x >> (j % 58)) as usize + j * 7) % alphabet.len()] as char)
            .collect()
    });
    random.chain(edge(0)).chain(edge(9999)).collect()
}

/// Keys placed at each end of the bucket range.
const EDGE_KEYS: usize = 5;

/// NGINX answering `GET /?key=K` with the variant of each split, space-separated.
fn nginx_splitting() -> Nginx {
    Nginx::start(1, |ports| {
        let mut http = String::new();
        let mut answer = Vec::new();
        for (i, (_, percent, key)) in SPLITS.iter().enumerate() {
            let key = key.replace("${key}", "${arg_key}");
            http.push_str(&format!(
                "    split_clients \"{key}\" $split{i} {{ {percent}% canary; * stable; }}\n"
            ));
            answer.push(format!("$split{i}"));
        }
        http.push_str(&format!(
            "    server {{ listen 127.0.0.1:{}; location / {{ return 200 \"{}\"; }} }}\n",
            ports[0],
            answer.join(" ")
        ));
        http
    })
}

/// Runs `each` over `items` on 16 concurrent tasks, keeping the order of the results.
async fn in_parallel<T, F, Fut>(items: Arc<Vec<String>>, each: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(support::HttpClient, String) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = T> + Send,
{
    const TASKS: usize = 16;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let items = items.clone();
        let each = each.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut out = Vec::new();
            for i in (t..items.len()).step_by(TASKS) {
                out.push((i, each(http.clone(), items[i].clone()).await));
            }
            out
        }));
    }
    let mut all: Vec<(usize, T)> = Vec::with_capacity(items.len());
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_land_where_nginx_split_clients_puts_them() {
    let nginx = nginx_splitting();
    let nginx_port = nginx_port(&nginx);
    let stable = FakeUpstream::start("stable").await;
    let mut config = Config::new();
    for (name, percent, key) in SPLITS {
        config = config.route(
            Route::new(name)
                .path_prefix(&format!("/{name}"))
                .canary_percent(percent)
                .nginx_hash(key)
                .stable(&stable)
                .canary(&stable),
        );
    }
    let cohort = TestCohort::start(config).await;
    let keys = Arc::new(keys());

    let nginx_url = format!("http://127.0.0.1:{nginx_port}/?key=");
    let by_nginx: Vec<Vec<String>> = in_parallel(keys.clone(), move |http, key| {
        let url = format!("{nginx_url}{key}");
        async move {
            let answer = send(&http, "GET", &url, &[], Default::default()).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.text().split(' ').map(str::to_owned).collect()
        }
    })
    .await;

    let admin = cohort.admin_url("/assign");
    let by_cohort: Vec<Vec<String>> = in_parallel(keys.clone(), move |http, key| {
        let admin = admin.clone();
        async move {
            let mut variants = Vec::new();
            for (route, _, _) in SPLITS {
                let url = format!("{admin}?route={route}&key={key}");
                let answer = send(&http, "GET", &url, &[], Default::default()).await;
                let doc: serde_json::Value =
                    serde_json::from_slice(&answer.body).expect("json answer");
                variants.push(doc["variant"].as_str().expect("variant").to_owned());
            }
            variants
        }
    })
    .await;

    let mut differences = Vec::new();
    let mut canaries = [0usize; SPLITS.len()];
    for (k, key) in keys.iter().enumerate() {
        for (s, (route, _, _)) in SPLITS.iter().enumerate() {
            let (ours, theirs) = (&by_cohort[k][s], &by_nginx[k][s]);
            canaries[s] += usize::from(ours == "canary");
            if ours != theirs {
                differences.push(format!(
                    "{route} key {key:?}: cohort {ours}, nginx {theirs}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} differ, e.g. {:?}",
        differences.len(),
        KEYS * SPLITS.len(),
        &differences[..differences.len().min(5)]
    );
    // The comparison saw both answers at every percentage.
    for (s, (route, _, _)) in SPLITS.iter().enumerate() {
        assert!(
            canaries[s] > 0 && canaries[s] < KEYS,
            "{route}: {canaries:?}"
        );
    }
    println!(
        "nginx {}: {} keys x {} percentages equal; canary counts {canaries:?}",
        support::nginx::nginx_version(),
        KEYS,
        SPLITS.len()
    );
    cohort.shutdown().await;
}

/// The one port NGINX listens on, read back from its config.
fn nginx_port(nginx: &Nginx) -> u16 {
    let conf = std::fs::read_to_string(nginx.dir().join("nginx.conf")).expect("nginx.conf");
    let at = conf.find("listen 127.0.0.1:").expect("listen line") + "listen 127.0.0.1:".len();
    conf[at..]
        .split(';')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}
