//! The deployment files, checked without a Docker engine: docker-compose.yml,
//! .env.example, the Dockerfiles, deploy/kafka, deploy/prometheus and
//! deploy/grafana.
//!
//! What is checked: the files parse; every image is built from a context and
//! a Dockerfile that exist; every bind-mounted host path exists; every
//! dependency names a service, with a condition the target can meet; the
//! long-running services have health checks; every interpolated variable is
//! in .env.example or has a default; the app's environment holds only
//! variables the app reads (from `opsci-app run --help`); the topic script
//! creates every topic; Prometheus scrapes every app replica; the dashboard
//! queries only metrics the app exports, through the provisioned datasource.
//!
//! `app_environment_is_read_by_the_app` runs the release binary
//! `<target>/release/opsci-app`, which `cargo test --workspace --release`
//! builds (a test of this crate alone does not).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::deploy::{dashboard, dashboard_metrics, exprs, metric_names, repo_root};
use serde_yaml_ng::Value;

/// Metrics the dashboard must show (the others are optional).
const REQUIRED_DASHBOARD_METRICS: &[&str] = &[
    "opsci_movements_total",
    "opsci_consumer_lag",
    "opsci_commit_latency_seconds_sum",
    "opsci_commit_latency_seconds_count",
    "opsci_commit_latency_seconds_max",
    "opsci_strapi_backlog",
    "opsci_strapi_requests_total",
    "opsci_products",
    "opsci_rejections_total",
    "opsci_dead_lettered_total",
];

/// Services that must have a health check whatever else the file says.
const HEALTH_CHECKED: &[&str] = &["kafka", "postgres", "strapi", "opsci-app"];

/// Variables the app reads that clap does not list: the log filter is read
/// by the logging set-up.
const READ_OUTSIDE_CLAP: &[&str] = &["RUST_LOG"];

/// The app's topics: environment variable and default name.
const TOPICS: &[(&str, &str)] = &[
    ("PRODUCT_TOPIC", "product"),
    ("EVENT_TOPIC", "event"),
    ("STOCK_TOPIC", "stock"),
    ("ERROR_TOPIC", "error"),
    ("CATALOGUE_TOPIC", "catalogue"),
];

const APP: &str = "opsci-app";
const APP_PORT: u16 = 8080;
const STATE_DIR: &str = "/var/lib/opsci";

// ---- Helpers -----------------------------------------------------------------

fn path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

fn read(relative: &str) -> String {
    let file = path(relative);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// A scalar as Compose reads it (numbers and booleans become strings).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The keys of a YAML mapping, as strings.
fn keys(value: &Value) -> Vec<String> {
    value.as_mapping().map(|m| m.keys().map(scalar).collect()).unwrap_or_default()
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    let services = compose.get("services").and_then(Value::as_mapping).expect("docker-compose.yml has services");
    services.iter().map(|(name, service)| (scalar(name), service.clone())).collect()
}

fn service(compose: &Value, name: &str) -> Value {
    services(compose).remove(name).unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

/// A service's environment, in map or list form; values uninterpolated.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

/// A service's volumes as (type, source, target): "bind" when the source is a
/// path, "volume" when it names a volume, "anonymous" without a source.
fn volumes(service: &Value) -> Vec<(String, String, String)> {
    let Some(items) = service.get("volumes").and_then(Value::as_sequence) else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                match parts.as_slice() {
                    [target] => ("anonymous".into(), String::new(), target.to_string()),
                    [source, target, ..] => {
                        let kind = if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
                            "bind"
                        } else {
                            "volume"
                        };
                        (kind.into(), source.to_string(), target.to_string())
                    }
                    [] => unreachable!(),
                }
            }
            long => (
                long.get("type").map(scalar).unwrap_or_else(|| "volume".into()),
                long.get("source").map(scalar).unwrap_or_default(),
                long.get("target").map(scalar).expect("a long-form volume has a target"),
            ),
        })
        .collect()
}

/// The container path where `service` bind-mounts the host path `source`
/// (given relative to the repository root, as `./...`).
fn mount_target(service: &Value, source: &str) -> Option<String> {
    let wanted = normalize(source);
    volumes(service).into_iter().find(|(kind, s, _)| kind == "bind" && normalize(s) == wanted).map(|(_, _, t)| t)
}

fn normalize(relative: &str) -> String {
    relative.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// A health check's test, as a list of words (CMD and CMD-SHELL kept).
fn healthcheck_test(service: &Value) -> Option<Vec<String>> {
    let check = service.get("healthcheck")?;
    if check.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    match check.get("test")? {
        Value::String(shell) => Some(vec!["CMD-SHELL".into(), shell.clone()]),
        Value::Sequence(words) => Some(words.iter().map(scalar).collect()),
        _ => None,
    }
}

/// One `${...}` or `$NAME` of a Compose file.
#[derive(Debug)]
struct Interpolation {
    name: String,
    /// `${NAME:-default}` or `${NAME-default}`.
    has_default: bool,
    /// `${NAME:?message}` or `${NAME?message}`.
    required: bool,
}

/// The interpolations of a Compose file's text: `$$` is an escaped `$`, and
/// whole-line comments are not interpolated.
fn interpolations(text: &str) -> Vec<Interpolation> {
    let mut found = Vec::new();
    for line in text.lines().filter(|line| !line.trim_start().starts_with('#')) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            match bytes.get(i + 1) {
                Some(b'$') => i += 2,
                Some(b'{') => {
                    let close = line[i..].find('}').map(|c| i + c).unwrap_or_else(|| panic!("unclosed ${{ in: {line}"));
                    let inner = &line[i + 2..close];
                    let name_end =
                        inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
                    let (name, operator) = inner.split_at(name_end);
                    assert!(!name.is_empty(), "an interpolation without a name: {line}");
                    found.push(Interpolation {
                        name: name.to_string(),
                        has_default: operator.starts_with(":-") || operator.starts_with('-'),
                        required: operator.starts_with(":?") || operator.starts_with('?'),
                    });
                    i = close + 1;
                }
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let rest = &line[i + 1..];
                    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                    found.push(Interpolation { name: rest[..end].to_string(), has_default: false, required: false });
                    i += 1 + end;
                }
                _ => i += 1,
            }
        }
    }
    found
}

/// `${NAME:-default}` → `default`; anything else as it is.
fn default_of(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).and_then(|v| v.split_once(":-")) {
        Some((_, default)) => default.to_string(),
        None => value.to_string(),
    }
}

/// The variables of .env.example, in order; panics on a line that is neither
/// blank, a comment nor `NAME=value`.
fn env_example() -> Vec<(String, String)> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap_or_else(|| panic!(".env.example: not NAME=value: {line}"));
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                ".env.example: not a variable name: {name}"
            );
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// A Dockerfile's instructions, stage by stage: (`FROM` line, instructions
/// as (KEYWORD, arguments)), with continuation lines joined and comments
/// dropped; plus the global `ARG` defaults before the first `FROM`.
struct Dockerfile {
    args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instructions.iter().filter(move |(k, _)| k == keyword).map(|(_, a)| a.as_str())
    }
}

fn dockerfile(relative: &str) -> Dockerfile {
    let text = read(relative);
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut file = Dockerfile { args: BTreeMap::new(), stages: Vec::new() };
    for line in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (keyword, rest) = (keyword.to_ascii_uppercase(), rest.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let image = words.first().map(|image| substitute(image, &file.args)).unwrap_or_default();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            file.stages.push(Stage { image, name, instructions: Vec::new() });
        } else if let Some(stage) = file.stages.last_mut() {
            stage.instructions.push((keyword, rest));
        } else if keyword == "ARG" {
            let (name, default) = rest.split_once('=').unwrap_or((&rest, ""));
            file.args.insert(name.to_string(), default.to_string());
        }
    }
    assert!(!file.stages.is_empty(), "{relative} has no FROM");
    file
}

/// `${NAME}` / `$NAME` replaced by the global ARG defaults.
fn substitute(word: &str, args: &BTreeMap<String, String>) -> String {
    let mut word = word.to_string();
    for (name, value) in args {
        word = word.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    word
}

/// The words of a JSON-form instruction argument (`["a", "b"]`), else the
/// whitespace-separated words.
fn exec_words(argument: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(argument) {
        Ok(words) => words,
        Err(_) => argument.split_whitespace().map(String::from).collect(),
    }
}

/// `<target>/<profile>/opsci-app`, next to the test executable
/// (`<target>/<profile>/deps/deploy-<hash>`).
fn app_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test executable is in <target>/<profile>/deps");
    let binary = profile_dir.join(format!("{APP}{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        panic!(
            "{} does not exist: build the workspace first (`cargo test --workspace --release` builds it, \
             or `cargo build --release -p opsci-app`)",
            binary.display()
        );
    }
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let newest_source = newest_modification(&path("opsci-app/src"));
    if let (Some(built), Some(source)) = (built, newest_source) {
        if source > built {
            eprintln!(
                "warning: {} is older than opsci-app/src; rebuild it (`cargo build --release -p opsci-app`) \
                 if this test reports variables that the sources already read",
                binary.display()
            );
        }
    }
    binary
}

fn newest_modification(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time =
            if path.is_dir() { newest_modification(&path) } else { entry.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(time);
    }
    newest
}

/// The environment variables named by `[env: NAME=...]` (or `[env: NAME]`
/// when values are hidden) in clap's help text.
fn clap_env_names(help: &str) -> BTreeSet<String> {
    help.split("[env:")
        .skip(1)
        .filter_map(|rest| {
            let name: String =
                rest.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

// ---- docker-compose.yml ------------------------------------------------------

#[test]
fn compose_file_has_the_expected_services() {
    let names: BTreeSet<String> = services(&compose()).into_keys().collect();
    for wanted in ["kafka", "kafka-init", "postgres", "strapi", APP, "prometheus", "grafana"] {
        assert!(names.contains(wanted), "docker-compose.yml has no service {wanted}: {names:?}");
    }
}

#[test]
fn every_image_is_pulled_or_built_from_existing_files() {
    for (name, service) in services(&compose()) {
        match (service.get("image"), service.get("build")) {
            (_, Some(build)) => {
                let (context, dockerfile) = match build {
                    Value::String(context) => (context.clone(), "Dockerfile".to_string()),
                    build => (
                        build.get("context").map(scalar).unwrap_or_else(|| ".".into()),
                        build.get("dockerfile").map(scalar).unwrap_or_else(|| "Dockerfile".into()),
                    ),
                };
                let context = path(&normalize(&context));
                assert!(context.is_dir(), "{name}: build context {} is not a directory", context.display());
                let dockerfile = context.join(dockerfile);
                assert!(dockerfile.is_file(), "{name}: {} does not exist", dockerfile.display());
            }
            (Some(image), None) => {
                let image = scalar(image);
                assert!(image.contains(':') && !image.ends_with(":latest"), "{name}: pin the image's tag: {image}");
            }
            (None, None) => panic!("{name} has neither image nor build"),
        }
    }
}

#[test]
fn bind_mounts_exist_and_named_volumes_are_declared() {
    let compose = compose();
    let declared = compose.get("volumes").map(keys).unwrap_or_default();
    for (name, service) in services(&compose) {
        for (kind, source, target) in volumes(&service) {
            match kind.as_str() {
                "bind" => {
                    assert!(source.starts_with("./"), "{name}: bind-mount paths relative to the root: {source}");
                    let host = path(&normalize(&source));
                    assert!(host.exists(), "{name}: {} (mounted at {target}) does not exist", host.display());
                }
                "volume" => {
                    assert!(declared.contains(&source), "{name}: volume {source} is not declared under volumes:")
                }
                _ => {}
            }
        }
    }
}

#[test]
fn dependencies_name_services_with_a_condition() {
    let services = services(&compose());
    for (name, service) in &services {
        let Some(depends_on) = service.get("depends_on") else { continue };
        let map =
            depends_on.as_mapping().unwrap_or_else(|| panic!("{name}: depends_on in long form, each with a condition"));
        for (target, settings) in map {
            let target = scalar(target);
            let other = services.get(&target).unwrap_or_else(|| panic!("{name} depends on unknown service {target}"));
            let condition = settings.get("condition").map(scalar);
            match condition.as_deref() {
                Some("service_healthy") => assert!(
                    healthcheck_test(other).is_some(),
                    "{name} waits for {target} to be healthy, but {target} has no health check"
                ),
                Some("service_completed_successfully") => assert_eq!(
                    other.get("restart").map(scalar).as_deref(),
                    Some("no"),
                    "{name} waits for {target} to complete: {target} must be one-shot (restart: \"no\")"
                ),
                Some("service_started") => {}
                other => panic!("{name} depends on {target} with no valid condition: {other:?}"),
            }
        }
    }
}

#[test]
fn long_running_services_have_health_checks() {
    let services = services(&compose());
    for (name, service) in &services {
        let one_shot = service.get("restart").map(scalar).as_deref() == Some("no");
        let test = healthcheck_test(service);
        if HEALTH_CHECKED.contains(&name.as_str()) || !one_shot {
            let test = test.unwrap_or_else(|| panic!("{name} has no health check"));
            assert!(
                matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() > 1,
                "{name}: a health check test is [\"CMD\", ...] or [\"CMD-SHELL\", \"...\"]: {test:?}"
            );
        }
    }
    for name in HEALTH_CHECKED {
        assert!(services.contains_key(*name), "no service {name}");
    }
}

#[test]
fn interpolated_variables_are_in_env_example() {
    let text = read("docker-compose.yml");
    let listed: BTreeMap<String, String> = env_example().into_iter().collect();
    let found = interpolations(&text);
    assert!(!found.is_empty(), "docker-compose.yml interpolates nothing");
    let mut used = BTreeSet::new();
    for interpolation in &found {
        let name = &interpolation.name;
        used.insert(name.clone());
        assert!(
            listed.contains_key(name) || interpolation.has_default,
            "docker-compose.yml uses ${{{name}}} with no default, and .env.example does not list it"
        );
        if interpolation.required {
            assert!(listed.contains_key(name), "the required ${{{name}:?...}} is not in .env.example");
        }
    }
    // And .env.example lists nothing that the compose file ignores (Compose's
    // own COMPOSE_* settings aside).
    for name in listed.keys() {
        assert!(
            used.contains(name) || name.starts_with("COMPOSE_"),
            ".env.example lists {name}, which docker-compose.yml does not use"
        );
    }
}

#[test]
fn secrets_are_required_and_their_examples_are_placeholders() {
    let text = read("docker-compose.yml");
    let listed: BTreeMap<String, String> = env_example().into_iter().collect();
    let secrets = [
        "POSTGRES_PASSWORD",
        "STRAPI_TOKEN",
        "APP_KEYS",
        "API_TOKEN_SALT",
        "ADMIN_JWT_SECRET",
        "TRANSFER_TOKEN_SALT",
        "JWT_SECRET",
        "ENCRYPTION_KEY",
        "GRAFANA_ADMIN_PASSWORD",
    ];
    let found = interpolations(&text);
    for secret in secrets {
        let uses: Vec<&Interpolation> = found.iter().filter(|i| i.name == secret).collect();
        assert!(!uses.is_empty(), "docker-compose.yml does not use {secret}");
        for use_ in uses {
            assert!(use_.required && !use_.has_default, "{secret}: use ${{{secret}:?message}}, never a default");
        }
        let example = listed.get(secret).unwrap_or_else(|| panic!(".env.example does not list {secret}"));
        assert!(example.contains("change-me"), ".env.example: {secret} must be an obvious placeholder: {example}");
    }
}

// ---- opsci-app ---------------------------------------------------------------

#[test]
fn app_environment_is_read_by_the_app() {
    let binary = app_binary();
    // A clean environment: clap prints the values of the variables it finds.
    let output = Command::new(&binary)
        .args(["run", "--help"])
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(output.status.success(), "{} run --help failed: {}", binary.display(), output.status);
    let help = String::from_utf8_lossy(&output.stdout);
    let read_by_app = clap_env_names(&help);
    assert!(!read_by_app.is_empty(), "`opsci-app run --help` names no environment variable:\n{help}");

    let environment = environment(&service(&compose(), APP));
    let unread: Vec<&String> = environment
        .keys()
        .filter(|name| !read_by_app.contains(*name) && !READ_OUTSIDE_CLAP.contains(&name.as_str()))
        .collect();
    assert!(
        unread.is_empty(),
        "the {APP} service sets variables that `opsci-app run` does not read: {unread:?}\n\
         (the app reads {read_by_app:?}; rebuild it if its sources changed)"
    );
}

#[test]
fn app_service_reaches_kafka_and_strapi_and_scales() {
    let compose = compose();
    let app = service(&compose, APP);
    let env = environment(&app);
    let get = |name: &str| env.get(name).unwrap_or_else(|| panic!("{APP}: {name} is not set")).clone();
    assert_eq!(get("KAFKA_BROKERS"), "kafka:9092");
    assert_eq!(get("STRAPI_URL"), "http://strapi:1337");
    assert_eq!(get("STATE_DIR"), STATE_DIR);
    assert_eq!(get("LOG_FORMAT"), "json");
    let http_addr = get("HTTP_ADDR");
    assert_eq!(http_addr, format!("0.0.0.0:{APP_PORT}"), "{APP}: listen on every interface of the container");
    assert_eq!(
        get("STRAPI_TOKEN"),
        environment(&service(&compose, "strapi"))["STRAPI_TOKEN"],
        "{APP} and Strapi must share STRAPI_TOKEN"
    );
    let command: Vec<String> = match app.get("command") {
        Some(Value::Sequence(words)) => words.iter().map(scalar).collect(),
        Some(Value::String(line)) => line.split_whitespace().map(String::from).collect(),
        other => panic!("{APP}: command should be run: {other:?}"),
    };
    assert_eq!(command, ["run"]);

    // Scalable: replicas from the environment, no fixed host port.
    let replicas = app.get("deploy").and_then(|d| d.get("replicas")).map(scalar);
    assert_eq!(replicas.as_deref(), Some("${APP_REPLICAS:-1}"));
    assert!(app.get("ports").is_none(), "{APP} publishes no host port, so that it can scale");
    assert!(app.get("container_name").is_none(), "{APP}: a fixed container name prevents scaling");

    // Health checked over HTTP on its own port.
    let check = healthcheck_test(&app).expect("a health check").join(" ");
    assert!(check.contains(&format!("localhost:{APP_PORT}/health")), "{APP}: health check on /health: {check}");

    // The sample data, read-only, for `docker compose run --rm opsci-app produce ...`.
    let mounts: Vec<String> = app.get("volumes").and_then(Value::as_sequence).unwrap().iter().map(scalar).collect();
    assert!(mounts.iter().any(|m| m == "./opsci-app/data:/data:ro"), "{APP}: mount opsci-app/data at /data:ro");
    for file in ["products.csv", "stock.csv"] {
        assert!(path("opsci-app/data").join(file).is_file(), "opsci-app/data/{file} is missing");
    }
}

#[test]
fn dockerfile_builds_the_app_and_runs_it_unprivileged() {
    let file = dockerfile("Dockerfile");
    assert!(file.stages.len() >= 2, "Dockerfile: a builder stage and a runtime stage");
    let (last, builders) = file.stages.split_last().unwrap();

    let builder = builders
        .iter()
        .find(|stage| {
            stage.all("RUN").any(|run| {
                let words: Vec<&str> = run.split_whitespace().collect();
                run.contains("cargo build")
                    && words.contains(&"--release")
                    && words.contains(&"--locked")
                    && words.windows(2).any(|w| matches!(w, ["-p" | "--package", "opsci-app"]))
            })
        })
        .expect("Dockerfile: a stage runs `cargo build --release -p opsci-app --locked`");
    assert!(
        builder.image.starts_with("rust:"),
        "Dockerfile: the builder stage starts from rust:, not {}",
        builder.image
    );
    let builder_name = builder.name.as_deref().expect("Dockerfile: the builder stage is named (FROM ... AS name)");

    assert!(
        last.all("COPY").any(|copy| copy.contains(&format!("--from={builder_name}")) && copy.contains(APP)),
        "Dockerfile: the runtime stage copies opsci-app from {builder_name}"
    );
    let entrypoint = last.all("ENTRYPOINT").last().map(exec_words).expect("Dockerfile: an ENTRYPOINT");
    assert!(entrypoint.iter().any(|w| w.ends_with(APP)), "Dockerfile: ENTRYPOINT runs opsci-app: {entrypoint:?}");
    let cmd = last.all("CMD").last().map(exec_words).unwrap_or_default();
    assert_eq!(cmd, ["run"], "Dockerfile: CMD [\"run\"]");
    assert!(
        last.all("EXPOSE").flat_map(str::split_whitespace).any(|p| p == APP_PORT.to_string()),
        "Dockerfile: EXPOSE {APP_PORT}"
    );
    assert!(last.all("VOLUME").any(|v| v.contains(STATE_DIR)), "Dockerfile: VOLUME {STATE_DIR}");
    let user = last.all("USER").last().expect("Dockerfile: the runtime stage sets a USER");
    assert!(!matches!(user.trim(), "root" | "0" | "0:0"), "Dockerfile: run as an unprivileged user, not {user}");
    // The compose health check uses curl: the runtime image installs it.
    let check = healthcheck_test(&service(&compose(), APP)).unwrap();
    if check.iter().any(|w| w.contains("curl")) {
        assert!(last.all("RUN").any(|run| run.contains("curl")), "Dockerfile: the runtime stage installs curl");
    }

    let ignored: Vec<String> = read(".dockerignore").lines().map(|l| l.trim().to_string()).collect();
    for wanted in ["target", ".git"] {
        assert!(ignored.iter().any(|l| l == wanted), ".dockerignore does not exclude {wanted}");
    }
    assert!(
        ignored.iter().any(|l| l == "strapi" || l == "strapi/node_modules"),
        ".dockerignore does not exclude strapi's node_modules"
    );
}

// ---- Kafka -------------------------------------------------------------------

#[test]
fn kafka_is_one_kraft_node_for_containers_and_the_host() {
    let compose = compose();
    let kafka = service(&compose, "kafka");
    assert_eq!(kafka.get("image").map(scalar).as_deref(), Some("apache/kafka:4.1.0"));
    let env = environment(&kafka);
    let get = |name: &str| env.get(name).unwrap_or_else(|| panic!("kafka: {name} is not set")).clone();
    assert_eq!(get("KAFKA_PROCESS_ROLES"), "broker,controller");
    let node_id = get("KAFKA_NODE_ID");
    assert!(get("KAFKA_CONTROLLER_QUORUM_VOTERS").starts_with(&format!("{node_id}@kafka:")));
    let controller = get("KAFKA_CONTROLLER_LISTENER_NAMES");
    let listeners = get("KAFKA_LISTENERS");
    let advertised = get("KAFKA_ADVERTISED_LISTENERS");
    assert!(listeners.contains(&format!("{controller}://")), "kafka: no {controller} listener in {listeners}");
    assert!(advertised.contains("://kafka:9092"), "kafka: containers use kafka:9092: {advertised}");
    assert!(advertised.contains("://localhost:"), "kafka: the host uses localhost: {advertised}");
    let inter_broker = get("KAFKA_INTER_BROKER_LISTENER_NAME");
    assert!(advertised.contains(&format!("{inter_broker}://kafka:9092")));
    for name in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        assert_eq!(get(name), "1", "kafka: {name} on a single node");
    }
    assert_eq!(get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"), "0");
    // Its data survives a restart.
    let log_dir = get("KAFKA_LOG_DIRS");
    assert!(
        volumes(&kafka).iter().any(|(kind, _, target)| kind == "volume" && *target == log_dir),
        "kafka: a named volume at {log_dir}"
    );
    // The external listener is published.
    let ports: Vec<String> = kafka.get("ports").and_then(Value::as_sequence).unwrap().iter().map(scalar).collect();
    assert!(ports.iter().any(|p| p.ends_with(":9094")), "kafka: publish the external listener: {ports:?}");
}

#[test]
fn kafka_init_creates_every_topic_once() {
    let compose = compose();
    let init = service(&compose, "kafka-init");
    assert_eq!(init.get("image"), service(&compose, "kafka").get("image"), "kafka-init uses the Kafka image");
    assert_eq!(init.get("restart").map(scalar).as_deref(), Some("no"));
    let script_in_container = mount_target(&init, "./deploy/kafka/create-topics.sh")
        .expect("kafka-init mounts deploy/kafka/create-topics.sh");
    let entrypoint = match init.get("entrypoint") {
        Some(Value::Sequence(words)) => words.iter().map(scalar).collect::<Vec<_>>().join(" "),
        Some(other) => scalar(other),
        None => String::new(),
    };
    assert!(entrypoint.contains(&script_in_container), "kafka-init runs the script: {entrypoint}");

    // Same topic names, with the same defaults, as the app.
    let init_env = environment(&init);
    let app_env = environment(&service(&compose, APP));
    for (name, default) in TOPICS {
        assert_eq!(init_env.get(*name), app_env.get(*name), "kafka-init and {APP} disagree on {name}");
        assert_eq!(default_of(&init_env[*name]), *default, "{name} defaults to {default}");
    }
    assert_eq!(init_env.get("PARTITIONS").map(String::as_str), Some("${PARTITIONS:-6}"));

    // The script itself, against a stand-in kafka-topics.sh that logs its
    // arguments and describes every topic with FAKE_PARTITIONS partitions.
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("kafka-topics.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"$*\" >> \"$CALLS\"\ncase \" $* \" in *\" --describe \"*)\n  \
         printf 'Topic: t\\tTopicId: x\\tPartitionCount: %s\\tReplicationFactor: 1\\n' \"$FAKE_PARTITIONS\";;\nesac\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = |actual_partitions: &str| {
        let calls = dir.path().join(format!("calls-{actual_partitions}"));
        let output = Command::new("sh")
            .arg(path("deploy/kafka/create-topics.sh"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KAFKA_BIN_DIR", dir.path())
            .env("BOOTSTRAP_SERVER", "kafka:9092")
            .env("PARTITIONS", "6")
            .env("CALLS", &calls)
            .env("FAKE_PARTITIONS", actual_partitions)
            .output()
            .expect("run sh deploy/kafka/create-topics.sh");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "create-topics.sh failed: {stderr}");
        (std::fs::read_to_string(calls).unwrap_or_default(), stderr)
    };

    let (calls, stderr) = run("6");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let creates: Vec<&str> = calls.lines().filter(|l| l.contains("--create")).collect();
    assert_eq!(creates.len(), TOPICS.len(), "one --create per topic:\n{calls}");
    for (_, topic) in TOPICS {
        let create = creates
            .iter()
            .find(|l| l.contains(&format!("--topic {topic} ")))
            .unwrap_or_else(|| panic!("topic {topic} is not created:\n{calls}"));
        for wanted in ["--bootstrap-server kafka:9092", "--if-not-exists", "--partitions 6", "--replication-factor 1"] {
            assert!(create.contains(wanted), "{topic}: no {wanted} in `{create}`");
        }
        assert_eq!(
            create.contains("cleanup.policy=compact"),
            *topic == "catalogue",
            "only the catalogue is compacted: `{create}`"
        );
    }
    // A topic left with another partition count is reported.
    let (_, stderr) = run("3");
    assert!(stderr.contains("WARNING"), "no warning for topics with 3 partitions: {stderr}");
}

// ---- Strapi --------------------------------------------------------------------

#[test]
fn strapi_image_runs_in_production_on_postgres() {
    let compose = compose();
    let strapi = service(&compose, "strapi");
    let env = environment(&strapi);
    assert_eq!(env.get("DATABASE_CLIENT").map(String::as_str), Some("postgres"));
    assert_eq!(env.get("DATABASE_HOST").map(String::as_str), Some("postgres"));
    assert_eq!(env.get("HOST").map(String::as_str), Some("0.0.0.0"));
    let postgres = environment(&service(&compose, "postgres"));
    for (strapi_name, postgres_name) in [
        ("DATABASE_NAME", "POSTGRES_DB"),
        ("DATABASE_USERNAME", "POSTGRES_USER"),
        ("DATABASE_PASSWORD", "POSTGRES_PASSWORD"),
    ] {
        assert_eq!(
            env.get(strapi_name),
            postgres.get(postgres_name),
            "strapi {strapi_name} vs postgres {postgres_name}"
        );
    }

    // Every variable given to Strapi is one that its configuration reads.
    let mut sources = String::new();
    for dir in ["strapi/config", "strapi/src"] {
        for entry in std::fs::read_dir(path(dir)).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "js") {
                sources.push_str(&std::fs::read_to_string(entry.path()).unwrap());
            }
        }
    }
    let read_by_strapi_itself = ["STRAPI_TELEMETRY_DISABLED"];
    for name in env.keys() {
        assert!(
            sources.contains(&format!("'{name}'"))
                || sources.contains(&format!("process.env.{name}"))
                || read_by_strapi_itself.contains(&name.as_str()),
            "strapi: {name} is read nowhere in strapi/config or strapi/src"
        );
    }

    let check = healthcheck_test(&strapi).expect("strapi has a health check").join(" ");
    assert!(check.contains("/_health") && check.contains("204"), "strapi: health check on GET /_health: {check}");

    let file = dockerfile("strapi/Dockerfile");
    let all: Vec<&Stage> = file.stages.iter().collect();
    assert!(all.iter().any(|s| s.all("RUN").any(|r| r.contains("npm ci"))), "strapi/Dockerfile: npm ci");
    let last = all.last().unwrap();
    let start = last.all("CMD").chain(last.all("ENTRYPOINT")).flat_map(exec_words).collect::<Vec<_>>().join(" ");
    assert!(start.contains("start") || start.contains("run.sh"), "strapi/Dockerfile: starts Strapi: {start}");
    assert!(last.all("ENV").any(|e| e.contains("NODE_ENV=production")), "strapi/Dockerfile: NODE_ENV=production");
    let ignored = read("strapi/.dockerignore");
    for wanted in ["node_modules", ".tmp", "build"] {
        assert!(ignored.lines().any(|l| l.trim() == wanted), "strapi/.dockerignore does not exclude {wanted}");
    }
}

// ---- Prometheus and Grafana ------------------------------------------------------

#[test]
fn prometheus_scrapes_every_app_replica() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    let config_path = match prometheus.get("command") {
        Some(Value::Sequence(args)) => {
            args.iter().map(scalar).find_map(|a| a.strip_prefix("--config.file=").map(String::from))
        }
        _ => None,
    }
    .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    assert_eq!(
        mount_target(&prometheus, "./deploy/prometheus/prometheus.yml").as_deref(),
        Some(config_path.as_str()),
        "prometheus mounts deploy/prometheus/prometheus.yml where --config.file points"
    );

    let config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config.get("scrape_configs").and_then(Value::as_sequence).expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|job| {
            job.get("dns_sd_configs").is_some_and(|sd| {
                sd.as_sequence().unwrap().iter().any(|sd| {
                    sd.get("names")
                        .and_then(Value::as_sequence)
                        .is_some_and(|names| names.iter().map(scalar).any(|n| n == APP || n == format!("tasks.{APP}")))
                })
            })
        })
        .expect("a scrape job finds the opsci-app replicas through DNS (dns_sd_configs)");
    let sd = &job["dns_sd_configs"].as_sequence().unwrap()[0];
    assert_eq!(sd.get("type").map(scalar).as_deref(), Some("A"));
    assert_eq!(sd.get("port").map(scalar), Some(APP_PORT.to_string()));
    assert_eq!(job.get("metrics_path").map(scalar).as_deref().unwrap_or("/metrics"), "/metrics");
    assert_eq!(job.get("scrape_interval").map(scalar).as_deref(), Some("5s"));
}

#[test]
/// That the app exports every metric queried here is checked against the
/// running app's `/metrics` by `opsci-app/tests/http.rs`.
fn the_dashboard_shows_what_operators_need() {
    let board = dashboard();
    assert!(board["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", board["schemaVersion"]);
    assert!(board["uid"].as_str().is_some_and(|u| !u.is_empty()), "the dashboard has a uid");

    let metrics = dashboard_metrics();
    for wanted in REQUIRED_DASHBOARD_METRICS {
        assert!(metrics.contains(*wanted), "no panel shows {wanted}");
    }
    for expr in exprs(&board) {
        assert!(!metric_names(&expr).is_empty(), "a query names no opsci_ metric: {expr}");
    }
    for title in [
        "Movements per second",
        "Consumer lag",
        "Commit latency",
        "Strapi sync backlog and errors",
        "Products by status",
        "Error topic rate",
    ] {
        assert!(panels(&board).iter().any(|p| p["title"] == title), "no panel titled {title}");
    }
}

/// Every panel, rows' nested panels included (rows themselves left out).
fn panels(board: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for panel in board["panels"].as_array().expect("the dashboard has panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(panel.clone());
        }
    }
    out
}

#[test]
fn grafana_provisioning_matches_the_dashboard() {
    let compose = compose();
    let grafana = service(&compose, "grafana");

    // The datasource: the compose Prometheus, under the uid the panels use.
    assert!(
        mount_target(&grafana, "./deploy/grafana/provisioning/datasources")
            .is_some_and(|t| t == "/etc/grafana/provisioning/datasources"),
        "grafana mounts deploy/grafana/provisioning/datasources"
    );
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = datasources["datasources"]
        .as_sequence()
        .and_then(|list| list.iter().find(|d| d.get("type").map(scalar).as_deref() == Some("prometheus")))
        .expect("a prometheus datasource is provisioned");
    let uid = datasource.get("uid").map(scalar).expect("the datasource has a uid");
    let url = datasource.get("url").map(scalar).unwrap_or_default();
    assert_eq!(url, "http://prometheus:9090", "the datasource points at the prometheus service");

    let board = dashboard();
    let panels = panels(&board);
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id in {title}");
        assert_eq!(panel["datasource"]["uid"], uid.as_str(), "panel {title}: datasource uid");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()), "panel {title}: a target has no expr");
            assert_eq!(target["datasource"]["uid"], uid.as_str(), "panel {title}: target datasource uid");
        }
    }

    // The dashboard provider reads the folder where the dashboards are mounted.
    assert!(
        mount_target(&grafana, "./deploy/grafana/provisioning/dashboards")
            .is_some_and(|t| t == "/etc/grafana/provisioning/dashboards"),
        "grafana mounts deploy/grafana/provisioning/dashboards"
    );
    let dashboards_in_container =
        mount_target(&grafana, "./deploy/grafana/dashboards").expect("grafana mounts deploy/grafana/dashboards");
    let providers = yaml("deploy/grafana/provisioning/dashboards/opsci.yml");
    let provider = providers["providers"].as_sequence().and_then(|list| list.first()).expect("a dashboard provider");
    assert_eq!(provider.get("type").map(scalar).as_deref(), Some("file"));
    assert_eq!(
        provider.get("options").and_then(|o| o.get("path")).map(scalar).map(|p| p.trim_end_matches('/').to_string()),
        Some(dashboards_in_container.trim_end_matches('/').to_string()),
        "the dashboard provider reads where deploy/grafana/dashboards is mounted"
    );
    let home = environment(&grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH").cloned();
    if let Some(home) = home {
        assert_eq!(home, format!("{}/opsci.json", dashboards_in_container.trim_end_matches('/')));
    }

    // Anonymous visitors can view, not edit.
    let env = environment(&grafana);
    assert_eq!(env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str), Some("true"));
    assert_eq!(env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str), Some("Viewer"));
    let ports: Vec<String> = grafana.get("ports").and_then(Value::as_sequence).unwrap().iter().map(scalar).collect();
    assert!(ports.iter().any(|p| p.ends_with(":3000")), "grafana: publish port 3000: {ports:?}");
}

// ---- The helpers themselves ----------------------------------------------------------

#[test]
fn interpolations_skip_escapes_and_comments() {
    let found = interpolations("# ${IN_COMMENT}\na: ${A:-x} $$ESCAPED $B ${C:?no C} ${D}\nb: \"$${NOT_ME}\"\n");
    let summary: Vec<(String, bool, bool)> = found.into_iter().map(|i| (i.name, i.has_default, i.required)).collect();
    assert_eq!(
        summary,
        [
            ("A".to_string(), true, false),
            ("B".to_string(), false, false),
            ("C".to_string(), false, true),
            ("D".to_string(), false, false)
        ]
    );
}

#[test]
fn clap_env_markers_are_read_with_or_without_values() {
    let help = "  --a <A>  [env: KAFKA_BROKERS=kafka:9092]\n  --b  Token [env: STRAPI_TOKEN]\n  [default: x]";
    let names: Vec<String> = clap_env_names(help).into_iter().collect();
    assert_eq!(names, ["KAFKA_BROKERS", "STRAPI_TOKEN"]);
}
