//! The VPC and its way out: the VPC found by id or name (or created), its
//! internet gateway, and the route table with the default route.

use aws_sdk_ec2::types::{AttachmentStatus, Filter, ResourceType};

use super::{
    made_here, name_filter, name_tag, Ec2, NetworkError, DEFAULT_ROUTE, DEFAULT_VPC_CIDR,
    GATEWAY_NAME, ROUTE_TABLE_NAME, VPC_NAME,
};
use crate::ec2::{filter, settled};

impl<'a> Ec2<'a> {
    pub(super) async fn describe_vpcs(
        &self,
        vpc: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::Vpc>, NetworkError> {
        let mut vpcs: Vec<_> = self
            .client
            .describe_vpcs()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| self.failed("DescribeVpcs", format!("VPC {vpc}"), &error))?;
        vpcs.sort_by(|a, b| a.vpc_id().cmp(&b.vpc_id()));
        Ok(vpcs)
    }

    pub(super) async fn vpc_by_id(
        &self,
        vpc_id: &str,
    ) -> Result<aws_sdk_ec2::types::Vpc, NetworkError> {
        // As a filter, an unknown id is simply absent rather than an error.
        self.describe_vpcs(vpc_id, filter("vpc-id", vpc_id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| NetworkError::NoSuchVpc {
                vpc_id: vpc_id.to_owned(),
                region: self.region.clone(),
            })
    }

    /// The VPC tagged `muster-vpc`, created if there is none.
    pub(super) async fn ensure_muster_vpc(
        &self,
        created: &mut Vec<String>,
    ) -> Result<aws_sdk_ec2::types::Vpc, NetworkError> {
        let vpcs = self
            .describe_vpcs(&format!("Name={VPC_NAME}"), name_filter(VPC_NAME))
            .await?;
        if let Some(vpc) = vpcs.first() {
            if vpcs.len() > 1 {
                tracing::warn!(
                    region = %self.region,
                    count = vpcs.len(),
                    using = vpc.vpc_id().unwrap_or_default(),
                    "several VPCs are tagged {VPC_NAME}; using the lowest id"
                );
            }
            return Ok(vpc.clone());
        }
        let cidr = DEFAULT_VPC_CIDR;
        let vpc = self
            .client
            .create_vpc()
            .cidr_block(cidr.to_string())
            .tag_specifications(name_tag(ResourceType::Vpc, VPC_NAME))
            .send()
            .await
            .map_err(|error| self.failed("CreateVpc", format!("VPC {cidr}"), &error))?
            .vpc
            .ok_or_else(|| self.answer("CreateVpc", "Vpc"))?;
        let vpc_id = vpc
            .vpc_id()
            .ok_or_else(|| self.answer("CreateVpc", "VpcId"))?;
        tracing::info!(region = %self.region, %vpc_id, %cidr, "created VPC {VPC_NAME}");
        created.push(vpc_id.to_owned());
        Ok(vpc)
    }

    pub(super) async fn describe_gateways(
        &self,
        vpc_id: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::InternetGateway>, NetworkError> {
        let mut gateways: Vec<_> = self
            .client
            .describe_internet_gateways()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| {
                self.failed("DescribeInternetGateways", format!("for {vpc_id}"), &error)
            })?;
        gateways.sort_by(|a, b| a.internet_gateway_id().cmp(&b.internet_gateway_id()));
        Ok(gateways)
    }

    /// The internet gateway attached to the VPC: the one already there,
    /// else a detached `muster-gateway`, else a new one.
    pub(super) async fn ensure_gateway(
        &self,
        vpc_id: &str,
        created: &mut Vec<String>,
    ) -> Result<String, NetworkError> {
        // A VPC has at most one internet gateway; whatever its name, it is
        // the one to route through. A VPC created just now has none.
        if !made_here(created, vpc_id) {
            let attached = self
                .describe_gateways(vpc_id, filter("attachment.vpc-id", vpc_id))
                .await?;
            if let Some(id) = attached.first().and_then(|g| g.internet_gateway_id()) {
                return Ok(id.to_owned());
            }
        }

        let named = self
            .describe_gateways(vpc_id, name_filter(GATEWAY_NAME))
            .await?;
        let spare = named.iter().find(|g| {
            g.attachments()
                .iter()
                .all(|a| a.state() == Some(&AttachmentStatus::Detached))
        });
        let gateway_id = match spare.and_then(|g| g.internet_gateway_id()) {
            Some(id) => id.to_owned(),
            None => {
                let gateway = self
                    .client
                    .create_internet_gateway()
                    .tag_specifications(name_tag(ResourceType::InternetGateway, GATEWAY_NAME))
                    .send()
                    .await
                    .map_err(|error| {
                        self.failed("CreateInternetGateway", format!("for {vpc_id}"), &error)
                    })?;
                let id = gateway
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| self.answer("CreateInternetGateway", "InternetGatewayId"))?
                    .to_owned();
                tracing::info!(region = %self.region, gateway_id = %id, "created internet gateway {GATEWAY_NAME}");
                created.push(id.clone());
                id
            }
        };
        settled(|| {
            self.client
                .attach_internet_gateway()
                .internet_gateway_id(&gateway_id)
                .vpc_id(vpc_id)
                .send()
        })
        .await
        .map_err(|error| {
            self.failed(
                "AttachInternetGateway",
                format!("{gateway_id} to {vpc_id}"),
                &error,
            )
        })?;
        tracing::info!(region = %self.region, %gateway_id, %vpc_id, "attached internet gateway");
        Ok(gateway_id)
    }

    pub(super) async fn describe_route_tables(
        &self,
        vpc_id: &str,
        filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::RouteTable>, NetworkError> {
        let mut tables: Vec<_> = self
            .client
            .describe_route_tables()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| self.failed("DescribeRouteTables", format!("of {vpc_id}"), &error))?;
        tables.sort_by(|a, b| a.route_table_id().cmp(&b.route_table_id()));
        Ok(tables)
    }

    /// The VPC's `muster-route-table`, created if missing, with its
    /// `0.0.0.0/0` route to `gateway_id`.
    pub(super) async fn ensure_route_table(
        &self,
        vpc_id: &str,
        gateway_id: &str,
        created: &mut Vec<String>,
    ) -> Result<String, NetworkError> {
        // A VPC created just now has only its main table.
        let tables = if made_here(created, vpc_id) {
            Vec::new()
        } else {
            self.describe_route_tables(
                vpc_id,
                vec![filter("vpc-id", vpc_id), name_filter(ROUTE_TABLE_NAME)],
            )
            .await?
        };
        let table = match tables.into_iter().next() {
            Some(table) => table,
            None => {
                let table = settled(|| {
                    self.client
                        .create_route_table()
                        .vpc_id(vpc_id)
                        .tag_specifications(name_tag(ResourceType::RouteTable, ROUTE_TABLE_NAME))
                        .send()
                })
                .await
                .map_err(|error| self.failed("CreateRouteTable", format!("in {vpc_id}"), &error))?
                .route_table
                .ok_or_else(|| self.answer("CreateRouteTable", "RouteTable"))?;
                let id = table
                    .route_table_id()
                    .ok_or_else(|| self.answer("CreateRouteTable", "RouteTableId"))?;
                tracing::info!(region = %self.region, route_table_id = %id, %vpc_id, "created route table {ROUTE_TABLE_NAME}");
                created.push(id.to_owned());
                table
            }
        };
        let route_table_id = table
            .route_table_id()
            .ok_or_else(|| self.answer("DescribeRouteTables", "RouteTableId"))?
            .to_owned();

        self.ensure_default_route(&table, &route_table_id, gateway_id)
            .await?;
        Ok(route_table_id)
    }

    /// Points `table`'s default route (`0.0.0.0/0`) at `gateway_id`,
    /// adding it or replacing another target.
    async fn ensure_default_route(
        &self,
        table: &aws_sdk_ec2::types::RouteTable,
        route_table_id: &str,
        gateway_id: &str,
    ) -> Result<(), NetworkError> {
        let route = table
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE));
        let default_route_error = |call: &'static str, error: &dyn std::error::Error| {
            self.failed(
                call,
                format!("0.0.0.0/0 in {route_table_id} to {gateway_id}"),
                error,
            )
        };
        match route {
            Some(r) if r.gateway_id() == Some(gateway_id) => {}
            Some(r) => {
                tracing::info!(
                    region = %self.region,
                    %route_table_id,
                    from = r.gateway_id().unwrap_or("another target"),
                    to = %gateway_id,
                    "pointing the default route at the gateway"
                );
                settled(|| {
                    self.client
                        .replace_route()
                        .route_table_id(route_table_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id(gateway_id)
                        .send()
                })
                .await
                .map_err(|e| default_route_error("ReplaceRoute", &e))?;
            }
            None => {
                settled(|| {
                    self.client
                        .create_route()
                        .route_table_id(route_table_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id(gateway_id)
                        .send()
                })
                .await
                .map_err(|e| default_route_error("CreateRoute", &e))?;
                tracing::info!(region = %self.region, %route_table_id, %gateway_id, "added the default route");
            }
        }
        Ok(())
    }
}
