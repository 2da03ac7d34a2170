//! Problems found in a configuration and their miette form.
//!
//! Every problem has a [`Kind`]: a code from [`crate::error::Code`] plus a stable
//! slug, shown together as `deploy_code::E002::unknown_key`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use crate::error::Code;

/// What went wrong; each kind has a fixed code and slug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    NotFound,
    Unreadable,
    TooLarge,
    TooDeep,
    YamlSyntax,
    TemplateSyntax,
    UndefinedVariable,
    TemplateError,
    MissingSecret,
    UnsetVariable,
    SecretNotAllowed,
    VarFile,
    WrongType,
    UnknownKey,
    MissingKey,
    InvalidValue,
    DuplicateKey,
    DuplicateService,
    UnknownDependency,
    DependencyCycle,
    DisabledDependency,
    PortConflict,
    NonPositiveResource,
    HealthCheckWithoutProbe,
    InvalidServiceName,
    InvalidService,
    NoServices,
    TooManyProblems,
}

impl Kind {
    pub const ALL: [Kind; 28] = [
        Kind::NotFound,
        Kind::Unreadable,
        Kind::TooLarge,
        Kind::TooDeep,
        Kind::YamlSyntax,
        Kind::TemplateSyntax,
        Kind::UndefinedVariable,
        Kind::TemplateError,
        Kind::MissingSecret,
        Kind::UnsetVariable,
        Kind::SecretNotAllowed,
        Kind::VarFile,
        Kind::WrongType,
        Kind::UnknownKey,
        Kind::MissingKey,
        Kind::InvalidValue,
        Kind::DuplicateKey,
        Kind::DuplicateService,
        Kind::UnknownDependency,
        Kind::DependencyCycle,
        Kind::DisabledDependency,
        Kind::PortConflict,
        Kind::NonPositiveResource,
        Kind::HealthCheckWithoutProbe,
        Kind::InvalidServiceName,
        Kind::InvalidService,
        Kind::NoServices,
        Kind::TooManyProblems,
    ];

    pub fn code(self) -> Code {
        match self {
            Kind::NotFound | Kind::Unreadable => Code::E001,
            Kind::VarFile => Code::E016,
            Kind::DuplicateService => Code::S002,
            Kind::UnknownDependency | Kind::DisabledDependency => Code::E007,
            Kind::PortConflict => Code::S004,
            Kind::NonPositiveResource
            | Kind::HealthCheckWithoutProbe
            | Kind::InvalidServiceName
            | Kind::InvalidService => Code::S003,
            _ => Code::E002,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Kind::NotFound => "not_found",
            Kind::Unreadable => "unreadable",
            Kind::TooLarge => "too_large",
            Kind::TooDeep => "too_deep",
            Kind::YamlSyntax => "yaml_syntax",
            Kind::TemplateSyntax => "template_syntax",
            Kind::UndefinedVariable => "undefined_variable",
            Kind::TemplateError => "template_error",
            Kind::MissingSecret => "missing_secret",
            Kind::UnsetVariable => "unset_variable",
            Kind::SecretNotAllowed => "secret_not_allowed",
            Kind::VarFile => "var_file",
            Kind::WrongType => "wrong_type",
            Kind::UnknownKey => "unknown_key",
            Kind::MissingKey => "missing_key",
            Kind::InvalidValue => "invalid_value",
            Kind::DuplicateKey => "duplicate_key",
            Kind::DuplicateService => "duplicate_service",
            Kind::UnknownDependency => "unknown_dependency",
            Kind::DependencyCycle => "dependency_cycle",
            Kind::DisabledDependency => "disabled_dependency",
            Kind::PortConflict => "port_conflict",
            Kind::NonPositiveResource => "non_positive_resource",
            Kind::HealthCheckWithoutProbe => "health_check_without_probe",
            Kind::InvalidServiceName => "invalid_service_name",
            Kind::InvalidService => "invalid_service",
            Kind::NoServices => "no_services",
            Kind::TooManyProblems => "too_many_problems",
        }
    }

    /// `deploy_code::E002::unknown_key`.
    pub(crate) fn diagnostic_code(self) -> String {
        format!("deploy_code::{}::{}", self.code(), self.slug())
    }
}

/// One problem: a message, labelled spans (byte ranges in the shown source) and
/// a help line.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    pub message: String,
    pub labels: Vec<(Range<usize>, String)>,
    pub help: String,
    /// Which source the spans point into.
    pub origin: Origin,
    /// Where in the document the problem is (mapping keys and sequence
    /// indexes from the root), when the reporter knows it.
    pub path: Vec<String>,
}

/// The text a problem's spans refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The file as written (template errors, and everything when rendering
    /// changed nothing).
    Template,
    /// The rendered text.
    Rendered,
    /// Another file the configuration reads (a `--var-file`): its name and text.
    File {
        name: String,
        text: std::sync::Arc<String>,
    },
    /// No file (a missing file, an unreadable var file).
    None,
}

impl Problem {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            labels: Vec::new(),
            help: String::new(),
            origin: Origin::Rendered,
            path: Vec::new(),
        }
    }

    pub fn path(mut self, path: Vec<String>) -> Self {
        self.path = path;
        self
    }

    pub fn label(mut self, span: Range<usize>, text: impl Into<String>) -> Self {
        self.labels.push((span, text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    pub(crate) fn origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// The first label's start, for ordering.
    pub fn position(&self) -> usize {
        self.labels.first().map_or(0, |(s, _)| s.start)
    }
}

/// A [`Problem`] bound to the source it points into: a miette diagnostic.
#[derive(Debug)]
pub struct ProblemReport {
    problem: Problem,
    source: Option<NamedSource<Arc<String>>>,
}

impl ProblemReport {
    pub fn new(problem: Problem, source: Option<NamedSource<Arc<String>>>) -> Self {
        Self { problem, source }
    }

    pub fn kind(&self) -> Kind {
        self.problem.kind
    }
}

impl fmt::Display for ProblemReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for ProblemReport {}

impl Diagnostic for ProblemReport {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.problem.kind.diagnostic_code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        if self.problem.help.is_empty() {
            None
        } else {
            Some(Box::new(&self.problem.help))
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        if self.problem.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.problem.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let len = span.end.saturating_sub(span.start);
                if i == 0 {
                    LabeledSpan::new_primary_with_span(Some(text.clone()), (span.start, len))
                } else {
                    LabeledSpan::new_with_span(Some(text.clone()), (span.start, len))
                }
            },
        )))
    }
}

/// The closest candidate to `word`, when one is close enough to suggest.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        if score > 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}
