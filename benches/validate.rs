//! Validation of a generated 10,000-service configuration (render, parse,
//! schema check, cross-checks and lowering).

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use deploy_code::config::{self, template::Inputs};

fn generated(n: usize) -> String {
    let mut s = String::from("version: \"1.0.0\"\nproject: bench\nservices:\n");
    for i in 0..n {
        let dep = if i > 0 {
            format!("    dependencies: [svc-{}]\n", i - 1)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  svc-{i}:\n    command: server\n    args: [\"--port\", \"{p}\"]\n{dep}    env:\n      MODE: production\n    resources: {{cpu_cores: 0.1, memory_mb: 64}}\n    ports:\n      - container_port: {p}\n    health_check:\n      endpoint: /health\n      interval_seconds: 5\n",
            p = 20000 + i
        ));
    }
    s
}

const TEMPLATE: &str = "services:\n{% for i in range(n) %}\n  svc-{{ i }}:\n    command: server\n    args: [\"--port\", \"{{ 20000 + i }}\"]\n    resources: {cpu_cores: 0.1, memory_mb: 64}\n    ports:\n      - container_port: {{ 20000 + i }}\n    health_check:\n      endpoint: /health\n{% endfor %}\n";

fn bench(c: &mut Criterion) {
    let text = generated(10_000);
    let inputs = Inputs::default();
    let path = Path::new("deploy-code.yaml");
    let mut g = c.benchmark_group("validate");
    g.sample_size(10);
    g.bench_function("10000_services_plain_yaml", |b| {
        b.iter(|| {
            let l = config::load_text(&text, path, &inputs).expect("valid");
            assert_eq!(l.desired.services.len(), 10_000);
        })
    });
    let mut inputs_t = Inputs::default();
    inputs_t.vars.push(("n".into(), "10000".into()));
    g.bench_function("10000_services_from_a_template_loop", |b| {
        b.iter(|| {
            let l = config::load_text(TEMPLATE, path, &inputs_t).expect("valid");
            assert_eq!(l.desired.services.len(), 10_000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
