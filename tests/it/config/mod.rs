//! Tests of the configuration language and `deploy-code validate`.

mod cli;
mod diagnostics;
mod examples;
mod fuzz;
mod limits;
mod schema;
mod templating;

use std::collections::BTreeMap;
use std::path::Path;

use deploy_code::config::{self, ConfigError, LoadedConfig, template::Inputs};

/// Inputs with exactly these environment variables (nothing from the process).
pub fn inputs(env: &[(&str, &str)]) -> Inputs {
    Inputs {
        vars: Vec::new(),
        var_files: Vec::new(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

pub fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
    config::load_text(text, Path::new("deploy-code.yaml"), &inputs(&[]))
}

pub fn load_with(text: &str, inputs: &Inputs) -> Result<LoadedConfig, ConfigError> {
    config::load_text(text, Path::new("deploy-code.yaml"), inputs)
}

/// The diagnostics as a person sees them, without colour.
pub fn rendered(err: &ConfigError) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
    let mut out = String::new();
    handler
        .render_report(&mut out, err)
        .expect("rendering to a string never fails");
    out
}

pub fn codes(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.codes(),
    }
}
