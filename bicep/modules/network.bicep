// Virtual network for the stack: one subnet for the AKS nodes (pods get
// overlay addresses, so the subnet only needs room for nodes) and one subnet
// delegated to PostgreSQL Flexible Server, whose private DNS zone is linked
// here so that pods resolve the server's private address.

@description('Azure region for the network resources.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('Address space of the virtual network.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('Subnet for the AKS node pools (Azure CNI overlay: nodes only).')
param aksSubnetPrefix string = '10.40.0.0/20'

@description('Subnet delegated to PostgreSQL Flexible Server.')
param postgresSubnetPrefix string = '10.40.16.0/24'

@description('Tags applied to every resource.')
param tags object = {}

var vnetName = '${orgPrefix}-metaflow-vnet'
var aksSubnetName = 'aks-nodes'
var postgresSubnetName = 'postgres'

resource aksNsg 'Microsoft.Network/networkSecurityGroups@2025-09-01' = {
  name: '${orgPrefix}-aks-nodes-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource postgresNsg 'Microsoft.Network/networkSecurityGroups@2025-09-01' = {
  name: '${orgPrefix}-postgres-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-postgres-from-vnet'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: postgresSubnetPrefix
          destinationPortRange: '5432'
        }
      }
    ]
  }
}

// Subnets stay inline: declared as separate child resources they would be
// deleted and re-created around the parent on every re-deploy.
resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: aksSubnetName
        properties: {
          addressPrefix: aksSubnetPrefix
          networkSecurityGroup: {
            id: aksNsg.id
          }
        }
      }
      {
        name: postgresSubnetName
        properties: {
          addressPrefix: postgresSubnetPrefix
          networkSecurityGroup: {
            id: postgresNsg.id
          }
          delegations: [
            {
              name: 'postgres-flexible-server'
              properties: {
                serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers'
              }
            }
          ]
        }
      }
    ]
  }
}

// Flexible Server with VNet integration registers its A record in this zone.
resource postgresDnsZone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.postgres.database.azure.com'
  location: 'global'
  tags: tags
}

resource postgresDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: postgresDnsZone
  name: '${vnetName}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

@description('Name of the virtual network.')
output vnetName string = vnet.name

@description('Resource ID of the virtual network.')
output vnetId string = vnet.id

@description('Name of the subnet that carries the AKS nodes.')
output aksSubnetName string = aksSubnetName

@description('Resource ID of the subnet that carries the AKS nodes.')
output aksSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, aksSubnetName)

@description('Resource ID of the subnet delegated to PostgreSQL Flexible Server.')
output postgresSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, postgresSubnetName)

@description('Resource ID of the private DNS zone for PostgreSQL (linked to the VNet).')
output postgresDnsZoneId string = postgresDnsZone.id
