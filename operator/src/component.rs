//! The four components of an app and what each one needs from the platform.

use std::fmt;

use crate::crd::{ComponentSpec, MicroserviceApp};

/// One of the four deployables of a MicroserviceApp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    User,
    Order,
    Product,
    Gateway,
}

impl Component {
    /// Every component, in the order children are applied and reported.
    pub const ALL: [Component; 4] = [Self::User, Self::Order, Self::Product, Self::Gateway];

    /// The name used in object names, labels and the image pattern.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Order => "order",
            Self::Product => "product",
            Self::Gateway => "gateway",
        }
    }

    /// Whether the component keeps data of its own (and so needs a database).
    pub fn is_stateful(self) -> bool {
        !matches!(self, Self::Gateway)
    }

    /// The components this one calls; it discovers their pods through EndpointSlices, so it
    /// needs a service-account token allowed to watch them.
    pub fn upstreams(self) -> &'static [Component] {
        match self {
            Self::Order => &[Self::User, Self::Product],
            // Before sold stock comes back, the product service asks the order service whether
            // the order really was cancelled.
            Self::Product => &[Self::Order],
            Self::Gateway => &[Self::User, Self::Order, Self::Product],
            Self::User => &[],
        }
    }

    /// Whether the component watches EndpointSlices.
    pub fn needs_discovery(self) -> bool {
        !self.upstreams().is_empty()
    }

    /// The component's settings in the app's spec.
    pub fn spec(self, app: &MicroserviceApp) -> &ComponentSpec {
        let components = &app.spec.components;
        match self {
            Self::User => &components.user,
            Self::Order => &components.order,
            Self::Product => &components.product,
            Self::Gateway => &components.gateway.component,
        }
    }

    /// The image the component runs: its own override, else the app's pattern.
    pub fn image(self, app: &MicroserviceApp) -> String {
        self.spec(app).image.clone().unwrap_or_else(|| {
            app.spec
                .image
                .replace(crate::crd::COMPONENT_PLACEHOLDER, self.name())
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
