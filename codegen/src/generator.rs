//! The service generator: tonic's output, routed through `trellis::codegen`,
//! followed by the Trellis additions for each service.

use std::collections::HashMap;

use heck::{ToShoutySnakeCase, ToSnakeCase};
use proc_macro2::TokenStream;
use prost_build::{Method, Service};
use quote::{format_ident, quote};

use crate::policy::{self, Policy};
use crate::{http, names};

/// Where generated code finds everything it uses, so a service crate needs no
/// direct dependency on tonic or prost.
pub(crate) const CODEGEN: &str = "::trellis::codegen";

/// Wraps tonic's [`prost_build::ServiceGenerator`]: tonic writes the client and
/// server, this appends descriptors, the discovery-aware client constructor,
/// and the glue that lets the Trellis server add the service in one line.
pub(crate) struct TrellisGenerator {
    pub(crate) tonic: Box<dyn prost_build::ServiceGenerator>,
    pub(crate) build_client: bool,
    pub(crate) build_server: bool,
    /// Absolute path of the encoded `FileDescriptorSet` written for reflection.
    pub(crate) descriptor_set: String,
    /// The checked `(trellis.method)` options, by method full name.
    pub(crate) policies: HashMap<String, Policy>,
    /// The checked `google.api.http` rules, by method full name.
    pub(crate) http_rules: HashMap<String, http::Rule>,
    /// The OpenAPI document of each service with REST routes, by full name.
    pub(crate) openapi: HashMap<String, String>,
}

impl prost_build::ServiceGenerator for TrellisGenerator {
    fn generate(&mut self, mut service: Service, buf: &mut String) {
        let original: Vec<String> = service.methods.iter().map(|m| m.name.clone()).collect();
        names::resolve(&mut service);
        for (method, original) in service.methods.iter_mut().zip(&original) {
            if method.name != *original {
                let why = if names::RESERVED.contains(&original.trim_start_matches("r#")) {
                    "is taken by the generated client or server"
                } else {
                    "is the name of an earlier method of this service"
                };
                if !method.comments.leading.is_empty() {
                    method.comments.leading.push(String::new());
                }
                method.comments.leading.push(format!(
                    " Named `{}` in Rust: `{original}` {why} (see the trellis-build docs, \"Method names\").",
                    method.name
                ));
            }
        }
        let mut tonic_code = String::new();
        self.tonic.generate(service.clone(), &mut tonic_code);
        let tonic_code = names::unshadow_server_trait(&service, &tonic_code);
        let tonic_code = names::allow_proto_cased_types(&tonic_code);
        buf.push_str(&route_tonic_paths(&tonic_code));

        let tokens = trellis_tokens(
            &service,
            self.build_client,
            self.build_server,
            &self.policies,
            &self.http_rules,
            &self.openapi,
        );
        buf.push_str(&render(tokens));
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.tonic.finalize_package(package, buf);
        let path = &self.descriptor_set;
        buf.push_str(&render(quote! {
            /// The encoded `FileDescriptorSet` of the protos this package was built from,
            /// served by the Trellis server's reflection service.
            pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(#path);
        }));
    }

    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }
}

fn render(tokens: TokenStream) -> String {
    // The tokens are built by this crate from valid identifiers; a parse
    // failure here is a bug in the generator, not in the user's input.
    let file = syn::parse2(tokens).expect("trellis-build generated invalid Rust");
    prettyplease::unparse(&file)
}

/// Makes tonic's generated paths (`tonic::...`) resolve through the
/// `trellis::codegen` re-export instead of a direct `tonic` dependency.
pub(crate) fn route_tonic_paths(code: &str) -> String {
    let replacement = format!("{CODEGEN}::tonic::");
    let mut out = String::with_capacity(code.len() + code.len() / 8);
    let mut rest = code;
    while let Some(at) = rest.find("tonic::") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let starts_path = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
        out.push_str(if starts_path { &replacement } else { "tonic::" });
        rest = &after["tonic::".len()..];
    }
    out.push_str(rest);
    out
}

fn trellis_tokens(
    service: &Service,
    build_client: bool,
    build_server: bool,
    policies: &HashMap<String, Policy>,
    http_rules: &HashMap<String, http::Rule>,
    openapi: &HashMap<String, String>,
) -> TokenStream {
    let codegen: syn::Path = syn::parse_str(CODEGEN).expect("CODEGEN is a valid path");
    let full_name = if service.package.is_empty() {
        service.proto_name.clone()
    } else {
        format!("{}.{}", service.package, service.proto_name)
    };
    let shouty = service.name.to_shouty_snake_case();
    let name_const = format_ident!("{shouty}_SERVICE_NAME");
    let descriptor = format_ident!("{shouty}_DESCRIPTOR");
    let snake = service.name.to_snake_case();
    let client_mod = format_ident!("{snake}_client");
    let server_mod = format_ident!("{snake}_server");
    let client_type = format_ident!("{}Client", service.name);
    let server_type = format_ident!("{}Server", service.name);
    let server_trait = format_ident!("{}", service.name);
    // Each method's HTTP rule is a constant of its own, which the method's
    // descriptor refers to.
    let mut rule_consts = TokenStream::new();
    let methods: Vec<TokenStream> = service
        .methods
        .iter()
        .map(|method| {
            let method_full_name = format!("{full_name}.{}", method.proto_name);
            let policy = policies.get(&method_full_name);
            let rule_const = http_rules.get(&method_full_name).map(|rule| {
                let rust_name = method.name.trim_start_matches("r#").to_shouty_snake_case();
                let ident = format_ident!("{shouty}_{rust_name}_HTTP_RULE");
                let rule = http::tokens(&codegen, rule);
                let doc =
                    format!(" The REST route of `{method_full_name}`, from its `google.api.http` option.");
                rule_consts.extend(quote! {
                    #[doc = #doc]
                    pub const #ident: #codegen::HttpRule = #rule;
                });
                ident
            });
            method_tokens(&codegen, &full_name, method, policy, rule_const)
        })
        .collect();

    let openapi_tokens = openapi.get(&full_name).map(|document| {
        let ident = format_ident!("{shouty}_OPENAPI");
        let doc = format!(" The OpenAPI 3 document of the REST routes of `{full_name}`, as JSON.");
        (
            ident.clone(),
            quote! {
                #[doc = #doc]
                pub const #ident: &str = #document;
            },
        )
    });
    let with_openapi = openapi_tokens.as_ref().map(|(ident, _)| quote!(.with_openapi(#ident)));
    let openapi_const = openapi_tokens.map(|(_, tokens)| tokens);
    let name_doc = format!(" The full protobuf name of `{full_name}`.");
    let descriptor_doc =
        format!(" How Trellis sees `{full_name}`: its methods, their policy, and its protos.");
    let mut tokens = quote! {
        #[doc = #name_doc]
        pub const #name_const: &str = #full_name;

        #[doc = #descriptor_doc]
        pub static #descriptor: #codegen::ServiceDescriptor = #codegen::ServiceDescriptor::new(
            #name_const,
            &[#(#methods),*],
            FILE_DESCRIPTOR_SET,
        )
        #with_openapi;

        #rule_consts
        #openapi_const
    };

    if build_client {
        let alias_doc =
            format!(" A `{full_name}` client that finds its instances through a Trellis registry.");
        let discover_doc = format!(
            " Connects to `{full_name}` by name, with the Trellis client stack: pass the application's `Context` (which adds the `[clients.\"{full_name}\"]` settings) or a bare `Registry`."
        );
        tokens.extend(quote! {
            #[doc = #alias_doc]
            // A crate that only serves the service does not use its client.
            #[allow(dead_code)]
            pub type #client_type = #client_mod::#client_type<#codegen::Channel>;

            #[allow(dead_code)]
            impl #client_mod::#client_type<#codegen::Channel> {
                #[doc = #discover_doc]
                ///
                /// # Errors
                ///
                /// When the registry knows no way to reach the service, or when
                /// called outside a Tokio runtime.
                pub fn discover(
                    clients: impl ::core::convert::Into<#codegen::Clients>,
                ) -> ::core::result::Result<Self, #codegen::Error> {
                    let channel = #codegen::Channel::discover(clients, &#descriptor)?;
                    let (decoding, encoding) = channel.message_limits();
                    ::core::result::Result::Ok(
                        Self::new(channel).max_decoding_message_size(decoding).max_encoding_message_size(encoding),
                    )
                }
            }
        });
    }

    if build_server {
        tokens.extend(quote! {
            impl<T: #server_mod::#server_trait> #codegen::DescribedService for #server_mod::#server_type<T> {
                const DESCRIPTOR: &'static #codegen::ServiceDescriptor = &#descriptor;

                fn limit_message_sizes(self, decoding: usize, encoding: usize) -> Self {
                    self.max_decoding_message_size(decoding).max_encoding_message_size(encoding)
                }
            }
        });
    }
    tokens
}

fn method_tokens(
    codegen: &syn::Path,
    full_name: &str,
    method: &Method,
    policy: Option<&Policy>,
    http_rule: Option<syn::Ident>,
) -> TokenStream {
    let name = &method.proto_name;
    let path = format!("/{full_name}/{name}");
    let idempotency = match method.options.idempotency_level() {
        prost_types::method_options::IdempotencyLevel::NoSideEffects => quote!(NoSideEffects),
        prost_types::method_options::IdempotencyLevel::Idempotent => quote!(Idempotent),
        prost_types::method_options::IdempotencyLevel::IdempotencyUnknown => quote!(Unknown),
    };
    let kind = match (method.client_streaming, method.server_streaming) {
        (false, false) => quote!(Unary),
        (false, true) => quote!(ServerStreaming),
        (true, false) => quote!(ClientStreaming),
        (true, true) => quote!(BidiStreaming),
    };
    let policy = policy.map(|policy| policy::tokens(codegen, policy));
    let http_rule = http_rule.map(|rule| quote!(.with_http_rule(&#rule)));
    quote! {
        #codegen::MethodDescriptor::new(
            #name,
            #path,
            #codegen::Idempotency::#idempotency,
            #codegen::StreamingKind::#kind,
        )
        #policy
        #http_rule
    }
}

#[cfg(test)]
mod tests {
    use super::route_tonic_paths;

    #[test]
    fn routes_only_path_starts() {
        let code = "use tonic::codegen::*;\nfn f(x: tonic::Status, y: my_tonic::X, z: ::tonic::Y) {}";
        assert_eq!(
            route_tonic_paths(code),
            "use ::trellis::codegen::tonic::codegen::*;\n\
             fn f(x: ::trellis::codegen::tonic::Status, y: my_tonic::X, z: ::tonic::Y) {}"
        );
    }
}
